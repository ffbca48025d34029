// The harness proves it can fail: every planted bug of the fixture store is caught by at least
// one crash image, and the correct store passes ≥ 2,000 images (the CI budget). Also: the
// oracle's rules, replay of a printed violation, ACE enumeration, and bad input.

import StrataIO
import Testing
@testable import StrataTesting

@Suite struct OracleTests {
    func recording(acknowledged: [Bool]) -> Recording {
        let recorder = CrashRecorder()
        for (index, acked) in acknowledged.enumerated() {
            let context = recorder.beginOperation("op\(index)")
            if acked { context.acknowledge() }
        }
        return recorder.recording()
    }

    @Test func acknowledgedMustBePresentUnacknowledgedWholeOrAbsent() {
        let recording = recording(acknowledged: [true, false, false])
        let oracle = Oracle<String, Int>(initialState: [:], effects: [
            [Effect(key: "a", value: 1)],
            [Effect(key: "a", value: 2)],
            [Effect(key: "b", value: 3), Effect(key: "c", value: 4)],
        ], recording: recording)
        let end = recording.endSequence
        #expect(oracle.verify(observed: ["a": 1], at: end).isEmpty)
        #expect(oracle.verify(observed: ["a": 2, "b": 3, "c": 4], at: end).isEmpty)
        #expect(oracle.verify(observed: [:], at: end).count == 1)                 // acked a=1 lost
        #expect(oracle.verify(observed: ["a": 9], at: end).count == 1)            // invented value
        #expect(oracle.verify(observed: ["a": 1, "b": 3], at: end).count == 1)    // op 3 partial
        // Before op 2 was issued, a=2 is data from nowhere.
        #expect(oracle.verify(observed: ["a": 2], at: recording.operations[1].issueSequence - 1).count == 1)
    }
}

@Suite struct HarnessTests {
    static let ciOptions = CrashRunOptions(recoveryCrashEvery: 8)

    func run(_ bugs: FixtureStore.Bugs, _ workload: Workload<FixtureOperation>, seeds: Range<UInt64>,
             stopAtFirstViolation: Bool = true) throws -> CrashRunReport {
        let runner = CrashRunner(system: FixtureStoreSystem(bugs: bugs), options: Self.ciOptions)
        var report = CrashRunReport()
        for seed in seeds {
            report.merge(try runner.run(workload, seed: seed))
            if stopAtFirstViolation && !report.violations.isEmpty { break }
        }
        return report
    }

    @Test func correctStorePassesAtLeastTwoThousandImages() throws {
        var report = try run([], FixtureStoreSystem.randomWorkload(), seeds: 0..<20, stopAtFirstViolation: false)
        report.merge(try run([], FixtureStoreSystem.aceWorkload(lengthMax: 2), seeds: 0..<160, stopAtFirstViolation: false))
        #expect(report.violations.isEmpty, "\(report.violations.prefix(3).map(\.description).joined(separator: "\n"))")
        #expect(report.totalImages >= 2000, "only \(report.totalImages) images")
        #expect(report.recoveryImagesChecked > 0)
    }

    @Test(arguments: FixtureStore.Bugs.named.map(\.name))
    func everyPlantedBugIsCaught(bugName: String) throws {
        let bug = FixtureStore.Bugs.named.first { $0.name == bugName }!.bug
        var report = try run(bug, FixtureStoreSystem.aceWorkload(lengthMax: 2), seeds: 0..<160)
        if report.violations.isEmpty {
            report.merge(try run(bug, FixtureStoreSystem.randomWorkload(), seeds: 0..<20))
        }
        #expect(!report.violations.isEmpty, "planted bug \(bugName) passed \(report.totalImages) crash images")
        // The printed address replays to the same violation.
        if let violation = report.violations.first {
            let runner = CrashRunner(system: FixtureStoreSystem(bugs: bug), options: Self.ciOptions)
            let workload = try FixtureStoreSystem.workload(named: violation.workload)
            let replayed = try runner.replay(workload, address: try ReplayAddress(parsing: violation.address.description))
            #expect(replayed.problems == violation.problems.filter { !$0.hasPrefix("crash during recovery") })
            #expect(violation.replayCommand.hasSuffix("--replay \(violation.address)"))
        }
    }

    @Test func aceEnumeratesEverySequence() throws {
        let workload = FixtureStoreSystem.aceWorkload(lengthMax: 3)
        #expect(workload.caseCount == 10 + 150 + 2250)
        var sequences: Set<String> = []
        for seed in 0..<workload.caseCount! {
            let operations = try workload.operations(seed: seed)
            let last = operations.last!.description
            #expect(last == "sync" || last == "checkpoint")
            sequences.insert(operations.map(\.description).joined(separator: ";"))
        }
        #expect(sequences.count == Int(workload.caseCount!))
        #expect(throws: CrashTestError.seedOutOfRange(workload: "kv-ace", seed: 2410, caseCount: 2410)) {
            _ = try workload.operations(seed: 2410)
        }
    }

    @Test func badInputIsATypedError() throws {
        #expect(throws: CrashTestError.self) { _ = try FixtureStoreSystem.workload(named: "nope") }
        let runner = CrashRunner(system: FixtureStoreSystem(), options: CrashRunOptions(memoryBudgetBytes: 20_000))
        #expect(throws: CrashTestError.self) { _ = try runner.run(FixtureStoreSystem.randomWorkload(), seed: 1) }
        let fine = CrashRunner(system: FixtureStoreSystem())
        #expect(throws: CrashTestError.self) {
            _ = try fine.replay(FixtureStoreSystem.randomWorkload(), address: ReplayAddress(seed: 1, step: 0, image: ImageAddress(image: 100_000)))
        }
    }
}
