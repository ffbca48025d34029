// LogThreadTests — the dedicated writer's threads are named and get their nice values.

import Foundation
import StrataIO
@testable import StrataLog
import StrataPool
import StrataTesting
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite struct LogThreadTests {
    /// The nice values of this process's threads named `name` (from /proc/self/task/*/stat).
    /// Other tests' logs run at the same time, so a test looks for a value only it sets.
    static func niceValuesOfThreads(named name: String) -> [Int] {
        ThreadInspection.files("stat", ofThreadsNamed: name).compactMap { stat in
            guard let close = stat.lastIndex(of: ")") else { return nil }
            // Fields after "(comm)": state is field 3, nice is field 19.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 16 ? Int(fields[16]) : nil
        }
    }

    @Test func completerAndWriterAreNamedAndGetTheirNiceValues() throws {
        let devices = LogTestSupport.makeDevices()
        var settings = LogTestSupport.settings(writer: .dedicatedThread)
        // Positive values: lowering a priority needs no privilege, so both always apply (a
        // negative one needs CAP_SYS_NICE, which root in a container may lack), and no other
        // test's log uses them, so finding them proves these threads got them.
        settings.completerNice = 3
        settings.writerNice = 2
        let log = try LogTestSupport.newLog(devices: devices, settings: settings)
        defer { try? log.close() }
        _ = try log.append(type: 1, transactionID: 1, payload: [1, 2, 3])
        try log.sync()                          // both threads have run their first lines
        let completers = Self.niceValuesOfThreads(named: "strata-logc")
        let writers = Self.niceValuesOfThreads(named: "strata-logw")
        #expect(!completers.isEmpty && !writers.isEmpty, "log threads not found by name")
        #expect(completers.contains(3), "completer nice values \(completers)")
        #expect(writers.contains(2), "writer nice values \(writers)")
    }

    @Test func niceOutsideItsRangeIsRefusedBySettingsValidation() {
        var settings = LogSettings()
        settings.completerNice = -21
        settings.writerNice = 20
        let problems = settings.validationProblems()
        #expect(problems.contains { $0.contains("completerNice") })
        #expect(problems.contains { $0.contains("writerNice") })
    }
}
