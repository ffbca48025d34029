// LogCrashTests — the intent log under the crash harness (LogCrashSystem): every acknowledged
// record replays exactly, unacknowledged ones whole or absent, in order, no leaked space; and
// the planted bug (callbacks before the flush) is caught.

import Foundation
import StrataIO
@testable import StrataLog
import StrataTesting
import Testing

@Suite(.serialized) struct LogCrashTests {
    @Test func randomWorkloadsPassEveryCrashImage() throws {
        let runner = CrashRunner(system: LogCrashSystem(), options: CrashRunOptions(recoveryCrashEvery: 16, replayCommandPrefix: "swift test --filter LogCrashTests"))
        var report = CrashRunReport()
        let start = Date()
        var seed: UInt64 = 1
        while (report.totalImages < 1500 || seed <= 6) && seed < 60 {
            report.merge(try runner.run(LogCrashSystem.workload, seed: seed))
            seed += 1
        }
        for violation in report.violations.prefix(5) { Issue.record("\(violation)") }
        #expect(report.violations.isEmpty)
        #expect(report.totalImages >= 1500)
        print("log crash: \(report.imagesChecked) images + \(report.recoveryImagesChecked) crashed-recovery images, seeds 1..<\(seed), "
              + "\(report.operationsRun) operations, \(report.writesRecorded) writes, \(report.flushesRecorded) flushes, "
              + "\(report.violations.count) violations in \(String(format: "%.1f", Date().timeIntervalSince(start))) s")
    }

    @Test func callbacksBeforeTheFlushAreCaught() throws {
        let runner = CrashRunner(system: LogCrashSystem(bug: true), options: CrashRunOptions(recoveryCrashEvery: 0))
        var caught: CrashViolation? = nil
        for seed in UInt64(1)...10 where caught == nil {
            caught = try runner.run(LogCrashSystem.workload, seed: seed).violations.first
        }
        #expect(caught != nil, "acknowledging before the flush went unnoticed")
        if let caught {
            #expect(caught.problems.joined().contains("acknowledged"), "\(caught)")
            print("planted bug caught: \(caught)")
        }
    }
}
