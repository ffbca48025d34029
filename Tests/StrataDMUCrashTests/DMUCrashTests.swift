// DMUCrashTests — the object store under the crash harness (DMUCrashSystem): every acknowledged
// transaction is there whole with its exact bytes, attributes, xattrs and index entries, every
// other one whole or absent in stop order (a prefix), and the full check is clean on every
// image; and the planted bugs are caught.

import Foundation
import StrataDMU
import StrataDMUCrash
import StrataIO
import StrataPool
import StrataTesting
import Testing

/// Budget (debug build, 2 shared cores): ~3,800 images, ~45 s of CPU; the tests are independent
/// and may run in parallel.
@Suite struct DMUCrashTests {
    static let replayPrefix = "strata-crash"

    /// Runs `workload` from `seed` until `images` crash images are checked (or `seedsMax` seeds).
    static func run(_ entry: DMUCrashWorkload, system: DMUCrashSystem? = nil, images: Int, seed first: UInt64 = 1,
                    seedsMax: UInt64 = 200, options: CrashRunOptions = CrashRunOptions(recoveryCrashEvery: 16, replayCommandPrefix: replayPrefix),
                    stopAtFirstViolation: Bool = false) throws -> (report: CrashRunReport, seeds: Range<UInt64>, seconds: Double) {
        let runner = CrashRunner(system: system ?? entry.system, options: options)
        var report = CrashRunReport()
        let start = Date()
        var seed = first
        while report.totalImages < images && seed < first + seedsMax {
            report.merge(try runner.run(entry.workload, seed: seed))
            seed += 1
            if stopAtFirstViolation && !report.violations.isEmpty { break }
        }
        return (report, first ..< seed, Date().timeIntervalSince(start))
    }

    static func summary(_ name: String, _ result: (report: CrashRunReport, seeds: Range<UInt64>, seconds: Double)) -> String {
        let report = result.report
        return "\(name): \(report.imagesChecked) images + \(report.recoveryImagesChecked) crashed-recovery images, seeds \(result.seeds), "
            + "\(report.operationsRun) operations, \(report.writesRecorded) writes, \(report.flushesRecorded) flushes, "
            + "\(report.violations.count) violations in \(String(format: "%.1f", result.seconds)) s"
    }

    static func expectClean(_ name: String, _ result: (report: CrashRunReport, seeds: Range<UInt64>, seconds: Double), images: Int) {
        for violation in result.report.violations.prefix(3) { Issue.record("\(violation)") }
        #expect(result.report.violations.isEmpty, "\(name): \(result.report.violations.count) violations")
        #expect(result.report.totalImages >= images, "\(name): only \(result.report.totalImages) images")
        print(summary(name, result))
    }

    // MARK: The contract (≥ 2,000 images in all)

    @Test func randomWorkloadsKeepTheContract() throws {
        let result = try Self.run(try DMUCrashSystem.workload(named: "dmu-random"), images: 900)
        Self.expectClean("dmu-random", result, images: 900)
    }

    @Test func smallWorkloadsKeepTheContract() throws {
        let result = try Self.run(try DMUCrashSystem.workload(named: "dmu-small"), images: 600, seed: 101)
        Self.expectClean("dmu-small", result, images: 600)
    }

    @Test func writeThenFlushLogKeepsTheContract() throws {
        let result = try Self.run(try DMUCrashSystem.workload(named: "dmu-random-flush"), images: 300, seed: 201)
        Self.expectClean("dmu-random-flush", result, images: 300)
    }

    /// The production log writer (writer and completer threads; callbacks acknowledge from the
    /// completer) under the harness: not deterministic, so only the contract is asserted.
    @Test func threadedWriterKeepsTheContract() throws {
        let entry = try DMUCrashSystem.workload(named: "dmu-random-threaded")
        #expect(entry.system.writer == .dedicatedThread)
        let result = try Self.run(entry, images: 300, seed: 401,
                                  options: CrashRunOptions(recoveryCrashEvery: 64, replayCommandPrefix: Self.replayPrefix))
        Self.expectClean("dmu-random-threaded", result, images: 300)
        // And it can fail: callbacks fired between a batch's write and its flush are caught.
        let planted = try Self.run(entry, system: DMUCrashSystem(writer: .dedicatedThread, bug: .callbacksBeforeDurable),
                                   images: 2_000, seed: 401,
                                   options: CrashRunOptions(recoveryCrashEvery: 64, replayCommandPrefix: Self.replayPrefix),
                                   stopAtFirstViolation: true)
        #expect(!planted.report.violations.isEmpty, "the threaded writer's planted bug was not caught")
    }

    /// dmu-random on a pool that keeps two copies of metadata (two metadata devices): both copies
    /// written, named and freed, and every image's check marks and verifies both.
    @Test func twoMetadataCopiesKeepTheContract() throws {
        let entry = try DMUCrashSystem.workload(named: "dmu-random-ditto")
        #expect(entry.system.metadataCopies == 2 && entry.system.devices.count == 4)
        let devices = entry.system.devices.map { MemoryDevice(path: $0.name, sizeBytes: $0.sizeBytes) }
        try entry.system.format(devices)
        let pool = try Pool.importPool(devices: devices, readOnly: true)
        #expect(pool.uberblock.roots[Uberblock.RootSlot.dnodeTable.rawValue].copyCount == 2, "the table root names two copies")
        // One seed; crashed recoveries thinned (every 64th image) to keep the test at a few seconds (6 s alone, debug).
        let result = try Self.run(entry, images: 300, seed: 301,
                                  options: CrashRunOptions(recoveryCrashEvery: 64, replayCommandPrefix: Self.replayPrefix))
        Self.expectClean("dmu-random-ditto", result, images: 300)
    }

    /// dmu-random with each checkpoint discarding the space it makes reusable: the discards
    /// (recorded as zeros that may or may not land) never touch anything an image still needs.
    @Test func discardingFreedSpaceKeepsTheContract() throws {
        let entry = try DMUCrashSystem.workload(named: "dmu-random-discard")
        #expect(entry.system.discard && entry.system.settings.discardFreedSpace)
        let result = try Self.run(entry, images: 300, seed: 501,
                                  options: CrashRunOptions(recoveryCrashEvery: 64, replayCommandPrefix: Self.replayPrefix))
        Self.expectClean("dmu-random-discard", result, images: 300)
        #expect(result.report.discardsRecorded > 0, "no discard was issued: the setting did not reach the pool")
    }

    /// A spread of the 1,040 ACE cases (all of them: `strata-crash --workload dmu-ace --seed 0
    /// --images 1000000`).
    @Test func aceCasesKeepTheContract() throws {
        let entry = try DMUCrashSystem.workload(named: "dmu-ace")
        let runner = CrashRunner(system: entry.system, options: CrashRunOptions(recoveryCrashEvery: 16, replayCommandPrefix: Self.replayPrefix))
        var report = CrashRunReport()
        let start = Date()
        let cases = stride(from: UInt64(0), to: entry.workload.caseCount!, by: 520)
        for seed in cases { report.merge(try runner.run(entry.workload, seed: seed)) }
        Self.expectClean("dmu-ace", (report, 0 ..< UInt64(cases.underestimatedCount), Date().timeIntervalSince(start)), images: 500)
    }

    // MARK: Planted bugs must be caught

    @Test(arguments: DMUCrashSystem.Bug.allCases)
    func plantedBugIsCaught(_ bug: DMUCrashSystem.Bug) throws {
        let entry = try DMUCrashSystem.workload(named: "dmu-random")
        let result = try Self.run(entry, system: DMUCrashSystem(bug: bug), images: 3000, seedsMax: 6,
                                  options: CrashRunOptions(recoveryCrashEvery: 0, replayCommandPrefix: "\(Self.replayPrefix) --bug \(bug.rawValue)"),
                                  stopAtFirstViolation: true)
        let caught = result.report.violations.first
        #expect(caught != nil, "planted bug \(bug.rawValue) went unnoticed over \(result.report.totalImages) images")
        if let caught {
            switch bug {
            case .callbacksBeforeDurable:
                #expect(caught.problems.joined().contains("acknowledged"), "\(caught)")
            case .dataFlushIgnored, .discardAtFree:
                #expect(!caught.problems.isEmpty, "\(caught)")
            }
            print("planted bug \(bug.rawValue) caught after \(result.report.totalImages) images: \(String(describing: caught).prefix(600))")
        }
    }

    // MARK: The workloads cover every operation

    @Test func randomWorkloadsCoverEveryOperation() throws {
        var seen: Set<String> = []
        for name in ["dmu-random", "dmu-small"] {
            let workload = try DMUCrashSystem.workload(named: name).workload
            for seed in UInt64(1)...4 {
                let operations = try workload.operations(seed: seed)
                for (index, operation) in operations.enumerated() {
                    switch operation {
                    case .checkpoint: seen.insert(index > 2 && index < operations.count - 2 ? "checkpoint mid-workload" : "checkpoint")
                    case .sync: seen.insert("sync")
                    case .commitAsync: seen.insert("commitAsync")
                    case .transaction(_, let steps):
                        if steps.count > 1 { seen.insert("several steps") }
                        for step in steps { seen.formUnion(Self.kinds(of: step)) }
                    }
                }
            }
        }
        let wanted = ["create regular", "create index", "create directory", "small write", "sub-4K write", "unaligned small write",
                      "large write aligned", "large write unaligned", "multi-MiB write", "punch", "truncate", "setattr",
                      "inline xattr", "large xattr", "removeXattr", "insert", "upsert", "delete", "destroy", "bad input",
                      "checkpoint mid-workload", "sync", "commitAsync", "several steps"]
        for kind in wanted { #expect(seen.contains(kind), "no \(kind) in the random workloads") }
    }

    static func kinds(of step: DMUStep) -> [String] {
        switch step {
        case .create(_, let type, _, _, _): return ["create \(type)"]
        case .write(_, let offset, let length, _):
            if length < 64 << 10 {
                return ["small write"] + (length < 4096 ? ["sub-4K write"] : []) + (offset % 4096 != 0 || length % 4096 != 0 ? ["unaligned small write"] : [])
            }
            return [offset % 4096 == 0 && length % 4096 == 0 ? "large write aligned" : "large write unaligned"] + (length >= 1 << 20 ? ["multi-MiB write"] : [])
        case .punch: return ["punch"]
        case .truncate: return ["truncate"]
        case .setAttributes: return ["setattr"]
        case .setXattr(_, _, let bytes, _): return [bytes > 720 ? "large xattr" : "inline xattr"]
        case .removeXattr: return ["removeXattr"]
        case .indexInsert(_, _, _, _, let upsert): return [upsert ? "upsert" : "insert"]
        case .indexDelete: return ["delete"]
        case .destroy: return ["destroy"]
        case .removeMissingXattr, .insertExistingKey: return ["bad input"]
        }
    }
}
