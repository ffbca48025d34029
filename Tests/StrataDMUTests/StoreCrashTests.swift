// The object store under the crash harness (StoreCrashSystem): every acknowledged transaction
// whole with exact bytes, every other whole or absent, and a clean `ObjectStore.check` on every
// crash image; crashes during recovery too. And the planted bug (the log acknowledging before
// its flush) is caught.

import Foundation
import StrataDMUCrash
import StrataTesting
import Testing

@Suite(.serialized) struct StoreCrashTests {
    @Test func randomWorkloadsPassEveryCrashImage() throws {
        let system = StoreCrashSystem()
        let runner = CrashRunner(system: system, options: CrashRunOptions(recoveryCrashEvery: 64,
                                                                           replayCommandPrefix: "strata-crash --workload object-random"))
        let workload = try #require(StoreCrashSystem.workload(named: "object-random"))
        var report = CrashRunReport()
        let start = Date()
        var seed: UInt64 = 1
        while report.totalImages < 2000 && seed < 80 {
            report.merge(try runner.run(workload, seed: seed))
            seed += 1
        }
        for violation in report.violations.prefix(5) { Issue.record("\(violation)") }
        #expect(report.violations.isEmpty)
        #expect(report.totalImages >= 2000)
        print("object-store crash: \(report.imagesChecked) images + \(report.recoveryImagesChecked) crashed-recovery images, seeds 1..<\(seed), "
              + "\(report.operationsRun) operations, \(report.writesRecorded) writes, \(report.flushesRecorded) flushes, "
              + "\(report.violations.count) violations in \(String(format: "%.1f", Date().timeIntervalSince(start))) s")
    }

    @Test func callbacksBeforeTheFlushAreCaught() throws {
        let runner = CrashRunner(system: StoreCrashSystem(acknowledgesBeforeFlush: true), options: CrashRunOptions(recoveryCrashEvery: 0))
        let workload = try #require(StoreCrashSystem.workload(named: "object-small"))
        var caught: CrashViolation? = nil
        for seed in UInt64(1)...20 where caught == nil {
            caught = try runner.run(workload, seed: seed).violations.first
        }
        #expect(caught != nil, "acknowledging before the flush went unnoticed")
        if let caught { print("planted bug caught: \(caught)") }
    }
}
