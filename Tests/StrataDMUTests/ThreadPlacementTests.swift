// ThreadPlacementTests — `ObjectStoreSettings.placeThreads` puts the log writer, the completer and
// the checkpoint thread on the CPUs it names; bad CPU lists are refused before anything changes.

import Foundation
import StrataIO
import StrataLog
import StrataPool
import StrataTesting
import Testing
@testable import StrataDMU

#if canImport(Glibc)
import Glibc
#endif

@Suite struct ThreadPlacementTests {
    /// The allowed-CPU sets of this process's threads named `name` (/proc/self/task/*/status).
    static func cpuSetsOfThreads(named name: String) -> [[Int]] {
        ThreadInspection.files("status", ofThreadsNamed: name).compactMap { status in
            status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") })
                .map { parseCPUList(String($0.dropFirst("Cpus_allowed_list:".count))) }
        }
    }

    /// "0-2,5" → [0, 1, 2, 5].
    static func parseCPUList(_ text: String) -> [Int] {
        var cpus: [Int] = []
        for part in text.trimmingCharacters(in: .whitespaces).split(separator: ",") {
            let bounds = part.split(separator: "-").compactMap { Int($0) }
            if bounds.count == 2 { cpus += Array(bounds[0]...bounds[1]) } else if bounds.count == 1 { cpus.append(bounds[0]) }
        }
        return cpus
    }

    @Test func placedThreadsRunOnlyOnTheirCPUs() throws {
        let allowed = ThreadSetup.allowedCPUs()
        guard allowed.count >= 2 else {
            print("ThreadPlacementTests: skipped, this process may use only CPUs \(allowed)")
            return
        }
        let writerCPUs = [allowed.last!], otherCPUs = Array(allowed.dropLast())
        var settings = StoreTestSupport.settings()
        settings.backgroundCheckpoints = true           // the checkpoint thread exists
        settings.placeThreads(writerCPUs: writerCPUs, otherCPUs: otherCPUs)
        let store = try StoreTestSupport.newStore(StoreTestSupport.devices(), settings: settings)
        defer { try? store.close() }
        let transaction = store.transaction()
        let object = transaction.declareCreate()
        try transaction.start()
        try transaction.create(object, type: .regular)
        try transaction.stop()
        try store.sync()                                // writer and completer have run their first lines
        try store.checkpoint()
        // Other tests' stores run unpinned threads of the same names (every allowed CPU): only
        // this store's threads can have these exact sets.
        #expect(Self.cpuSetsOfThreads(named: "strata-logw").contains(writerCPUs), "writer CPU sets \(Self.cpuSetsOfThreads(named: "strata-logw"))")
        #expect(Self.cpuSetsOfThreads(named: "strata-logc").contains(otherCPUs), "completer CPU sets \(Self.cpuSetsOfThreads(named: "strata-logc"))")
        var waited = 0
        while !Self.cpuSetsOfThreads(named: "strata-ckpt").contains(otherCPUs) && waited < 200 {   // it pins itself when it starts
            usleep(10_000)
            waited += 1
        }
        #expect(Self.cpuSetsOfThreads(named: "strata-ckpt").contains(otherCPUs), "checkpoint thread CPU sets \(Self.cpuSetsOfThreads(named: "strata-ckpt"))")
    }

    @Test func badCPUListsAreRefusedAtOpenAndNothingIsWritten() throws {
        var settings = StoreTestSupport.settings()
        settings.log.writerCPUs = [-1]
        settings.log.completerCPUs = [0, 0]
        settings.checkpointCPUs = [ThreadSetup.cpuNumberLimit]
        let devices = StoreTestSupport.devices()
        let pool = try Pool.create(name: "objtest", devices: [(devices[0], .data), (devices[1], .metadata), (devices[2], .log)])
        do {
            _ = try ObjectStore.open(pool: pool, settings: settings)
            Issue.record("a store with bad CPU lists opened")
        } catch {
            guard case .invalidSettings(let problems) = error else { Issue.record("unexpected \(error)"); return }
            #expect(problems.contains { $0.contains("writerCPUs") && $0.contains("CPU -1") }, "\(problems)")
            #expect(problems.contains { $0.contains("completerCPUs") && $0.contains("twice") }, "\(problems)")
            #expect(problems.contains { $0.contains("checkpointCPUs") && $0.contains("CPU \(ThreadSetup.cpuNumberLimit)") }, "\(problems)")
        }
        #expect(pool.uberblock.roots[Uberblock.RootSlot.dnodeTable.rawValue].isNull, "nothing was written")
    }

    @Test func pinningAThreadRestrictsItAndBadCPUsAreRefused() {
        #expect(ThreadSetup.pin(to: [ThreadSetup.cpuNumberLimit]) == EINVAL)
        #expect(ThreadSetup.pin(to: [-3]) == EINVAL)
        #expect(ThreadSetup.pin(to: []) == 0)
        let allowed = ThreadSetup.allowedCPUs()
        #expect(!allowed.isEmpty)
        // On a thread of its own: pinning the test runner's thread would outlive the test.
        final class Result: @unchecked Sendable { var error: Int32 = -1; var after: [Int] = [] }
        let result = Result()
        let target = [allowed.first!]
        let thread = ThreadSetup.start("the pinning test thread") {
            result.error = ThreadSetup.pin(to: target)
            result.after = ThreadSetup.allowedCPUs()
        }
        pthread_join(thread, nil)
        #expect(result.error == 0)
        #expect(result.after == target, "allowed after pinning: \(result.after)")
    }
}
