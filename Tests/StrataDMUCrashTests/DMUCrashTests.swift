// DMUCrashTests — the object store under the crash harness (DMUCrashSystem): every acknowledged
// transaction is there whole with its exact bytes, attributes, xattrs and index entries, every
// other one whole or absent in stop order (a prefix), and the full check is clean on every
// image; and the planted bugs are caught.

import Foundation
import StrataDMU
import StrataDMUCrash
import StrataIO
import StrataTesting
import Testing

@Suite(.serialized) struct DMUCrashTests {
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

    @Test func randomWorkloadsKeepTheContract() throws {
        let result = try Self.run(try DMUCrashSystem.workload(named: "dmu-random"), images: 600)
        for violation in result.report.violations.prefix(3) { Issue.record("\(violation)") }
        #expect(result.report.violations.isEmpty)
        #expect(result.report.totalImages >= 600)
        print(Self.summary("dmu-random", result))
    }
}
