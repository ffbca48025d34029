// strata pool check — the full consistency check of a pool's object store (ObjectStore.check):
// every block referenced exactly once and allocated, no leaked allocation, every metadata
// checksum (and with --data every data checksum), every index ordered and balanced, the log
// replayable. Imports read-only: writes nothing. Exit 0 when clean, 1 on any problem.

import ArgumentParser
import Foundation
import StrataDMU
import StrataIO
import StrataPool

struct PoolCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check the pool's objects, space maps and log for consistency (read-only); exit 1 on any problem."
    )
    @OptionGroup var devices: DeviceSelection
    @Flag(help: "Also read every data extent and verify its checksums.") var data = false
    @OptionGroup var output: OutputOptions

    func run() throws {
        let report = try reportingErrors { () throws -> StoreCheckReport in
            let pool = try devices.importPool(readOnly: true)
            return ObjectStore.check(pool: pool, verifyData: data)
        }
        if output.json {
            try printJSON(report)
        } else {
            print("checkpoint \(report.checkpoint): \(report.objects) objects (\(report.regularObjects) with data, \(report.indexObjects) indexes with \(report.indexEntries) entries)")
            print("  \(report.metadataBlocks) metadata blocks, \(report.dataExtents) data extents (\(report.dataBytes) bytes\(data ? ", \(report.dataBytesVerified) verified" : ""))")
            print("  log: \(report.logSegments) segments, \(report.logRecords) records to replay")
            print("  space: \(report.referencedBytes) bytes referenced, \(report.allocatedBytes) bytes allocated in the space maps")
            if report.isClean {
                print("clean")
            } else {
                print("\(report.problemCount) problem(s):")
                for problem in report.problems { print("  - \(problem)") }
                if report.problemCount > report.problems.count { print("  … and \(report.problemCount - report.problems.count) more") }
            }
        }
        if !report.isClean { throw ExitCode(1) }
    }
}
