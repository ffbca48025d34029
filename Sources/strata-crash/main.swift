// strata-crash — the crash harness from the command line.
//
//   strata-crash [--workload kv-random|pool-random|dmu-random|…] [--bug NAME]... [--seed 42] [--images 2000]
//                [--memory-budget 256M] [--long] [--replay SEED:STEP:IMAGE] [--list]
//
// Runs a workload of a system under test — the fixture store (kv-*, optionally with planted
// bugs), the pool (pool-*, optionally over devices with a planted flush fault) or the object
// store (dmu-*, optionally with a planted log or device bug) — for
// consecutive seeds from --seed until --images crash images are checked, prints each violation
// with the one command that replays it, and ends with a summary line:
//
//   crash: 2417 images, 0 violations (seed 42)
//
// Exit status: 0 clean, 1 violations found, 2 the harness could not run (operation failed
// without a crash, memory budget exceeded), 64 bad input. See docs/crash-testing.md.

import ArgumentParser
import Foundation
import StrataDMUCrash
import StrataIO
import StrataPoolCrash
import StrataTesting

/// One workload of either system, with the system it runs on (bugs planted), type-erased.
struct CrashDriver {
    let name: String
    let caseCount: UInt64?
    let run: (UInt64) throws(CrashTestError) -> CrashRunReport
    let replay: (ReplayAddress) throws(CrashTestError) -> CrashReplayReport

    init<System: SystemUnderTest>(system: System, workload: Workload<System.Operation>, options: CrashRunOptions) {
        let runner = CrashRunner(system: system, options: options)
        name = workload.name
        caseCount = workload.caseCount
        run = { (seed: UInt64) throws(CrashTestError) in try runner.run(workload, seed: seed) }
        replay = { (address: ReplayAddress) throws(CrashTestError) in try runner.replay(workload, address: address) }
    }
}

/// Every workload name, with its summary, for --list and --help.
let workloadSummaries: [(name: String, summary: String, caseCount: UInt64?)] =
    FixtureStoreSystem.workloads.map { ($0.name, $0.summary, $0.caseCount) }
    + PoolCrashSystem.workloads.map { ($0.name, "\($0.workload.summary) [\($0.system.name)]", $0.workload.caseCount) }
    + DMUCrashSystem.workloads.map { ($0.name, "\($0.workload.summary) [\($0.system.name)]", $0.workload.caseCount) }

func isPoolWorkload(_ name: String) -> Bool { PoolCrashSystem.workloads.contains { $0.name == name } }
func isDMUWorkload(_ name: String) -> Bool { DMUCrashSystem.workloads.contains { $0.name == name } }

struct StrataCrash: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "strata-crash",
        abstract: "Record a workload, build every crash image the crash model allows, reopen each and check the durability contract.",
        discussion: """
        Workloads: \(workloadSummaries.map { "\($0.name) (\($0.summary))" }.joined(separator: "; ")).
        Planted bugs (--bug, repeatable): fixture store (kv-*): \(FixtureStore.Bugs.named.map(\.name).joined(separator: ", ")); \
        pool (pool-*, one at most): \(FlushFaultDevice.Fault.allCases.map(\.rawValue).joined(separator: ", ")); \
        object store (dmu-*, one at most): \(DMUCrashSystem.Bug.allCases.map(\.rawValue).joined(separator: ", ")).
        Each violation prints SEED:STEP:IMAGE and a command that replays exactly that image.
        """
    )

    @Option(help: "Workload name (see --list).")
    var workload: String = "kv-random"

    @Option(help: "Plant a bug: in the fixture store (kv-*, repeatable): ack-before-flush, root-without-checksum, reuse-freed-block, replay-torn-tail; under the pool (pool-*): flush-ignored, writes-after-flush; under the object store (dmu-*): callbacks-before-durable, data-flush-ignored, discard-at-free.")
    var bug: [String] = []

    @Option(help: "First seed (for exhaustive workloads: the first case index).")
    var seed: UInt64 = 42

    @Option(help: "Check at least this many crash images (default 2000; --long 100000).")
    var images: Int?

    @Option(name: .customLong("memory-budget"), help: "Memory budget of each recording, bytes or with K/M/G suffix (default 256M).")
    var memoryBudget: String = "256M"

    @Option(help: "Crash the recovery of every n-th image (0: never).")
    var recoveryEvery: Int = 8

    @Option(help: "Replay one image: SEED:STEP:IMAGE or SEED:STEP:IMAGE.RECOVERY, as printed by a violation.")
    var replay: String?

    @Flag(help: "Long mode: 100,000 images by default, progress every 10,000.")
    var long = false

    @Option(help: "Print at most this many violations in full.")
    var violationsShown: Int = 10

    @Flag(help: "List workloads and bugs, then exit.")
    var list = false

    func validate() throws {
        if let images, images <= 0 { throw ValidationError("--images must be positive, not \(images)") }
        if recoveryEvery < 0 { throw ValidationError("--recovery-every must be ≥ 0") }
        _ = try parsedBudget()
        if let replay {
            do { _ = try ReplayAddress(parsing: replay) } catch { throw ValidationError(error.description) }
        }
        if !isPoolWorkload(workload) && !isDMUWorkload(workload) {
            do { _ = try FixtureStoreSystem.workload(named: workload) } catch {
                throw ValidationError(CrashTestError.unknownWorkload(name: workload, known: workloadSummaries.map(\.name)).description)
            }
        }
        _ = try driver(options: CrashRunOptions())
    }

    /// The driver for --workload with the planted --bug(s).
    func driver(options: CrashRunOptions) throws -> CrashDriver {
        if isDMUWorkload(workload) {
            let entry = try DMUCrashSystem.workload(named: workload)
            guard bug.count <= 1 else { throw ValidationError("the object store takes one --bug at most, not \(bug.count)") }
            var planted: DMUCrashSystem.Bug? = nil
            if let name = bug.first {
                guard let match = DMUCrashSystem.Bug(rawValue: name) else {
                    throw ValidationError("unknown object store bug '\(name)' (known: \(DMUCrashSystem.Bug.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                planted = match
            }
            let system = entry.system.planting(planted)
            return CrashDriver(system: system, workload: entry.workload, options: options)
        }
        if isPoolWorkload(workload) {
            let entry = try PoolCrashSystem.workload(named: workload)
            guard bug.count <= 1 else { throw ValidationError("the pool takes one --bug at most, not \(bug.count)") }
            var fault: FlushFaultDevice.Fault? = nil
            if let name = bug.first {
                guard let match = FlushFaultDevice.Fault(rawValue: name) else {
                    throw ValidationError("unknown pool bug '\(name)' (known: \(FlushFaultDevice.Fault.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                fault = match
            }
            let system = PoolCrashSystem(layout: entry.system.layout, policy: entry.system.policy, fault: fault)
            return CrashDriver(system: system, workload: entry.workload, options: options)
        }
        let fixtureWorkload = try FixtureStoreSystem.workload(named: workload)
        return CrashDriver(system: FixtureStoreSystem(bugs: try parsedBugs()), workload: fixtureWorkload, options: options)
    }

    func parsedBugs() throws -> FixtureStore.Bugs {
        var bugs: FixtureStore.Bugs = []
        for name in bug {
            guard let match = FixtureStore.Bugs.named.first(where: { $0.name == name }) else {
                throw ValidationError("unknown bug '\(name)' (known: \(FixtureStore.Bugs.named.map(\.name).joined(separator: ", ")))")
            }
            bugs.insert(match.bug)
        }
        return bugs
    }

    func parsedBudget() throws -> Int {
        let text = memoryBudget.uppercased().replacingOccurrences(of: "IB", with: "").replacingOccurrences(of: "B", with: "")
        let multipliers: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
        var digits = Substring(text)
        var multiplier = 1
        if let last = text.last, let value = multipliers[last] {
            multiplier = value
            digits = digits.dropLast()
        }
        guard let number = Int(digits), number > 0, number <= Int.max / multiplier else {
            throw ValidationError("--memory-budget '\(memoryBudget)' is not a positive size like 4096, 64M or 1G")
        }
        return number * multiplier
    }

    func run() throws {
        if list {
            for workload in workloadSummaries {
                print("\(workload.name): \(workload.summary)" + (workload.caseCount.map { " [\($0) cases]" } ?? ""))
            }
            print("bugs (kv-*): \(FixtureStore.Bugs.named.map(\.name).joined(separator: ", "))")
            print("bugs (pool-*): \(FlushFaultDevice.Fault.allCases.map { "\($0.rawValue) (\($0.summary))" }.joined(separator: ", "))")
            print("bugs (dmu-*): \(DMUCrashSystem.Bug.allCases.map { "\($0.rawValue) (\($0.summary))" }.joined(separator: ", "))")
            return
        }
        var prefix = "strata-crash"
        for name in bug { prefix += " --bug \(name)" }
        if recoveryEvery != 8 { prefix += " --recovery-every \(recoveryEvery)" }
        let options = CrashRunOptions(memoryBudgetBytes: try parsedBudget(), recoveryCrashEvery: recoveryEvery,
                                      replayCommandPrefix: prefix)
        let driver = try driver(options: options)
        do {
            if let replay {
                try runReplay(driver, address: try ReplayAddress(parsing: replay))
            } else {
                try runImages(driver)
            }
        } catch let error as CrashTestError {
            FileHandle.standardError.write("strata-crash: error: \(error)\n".data(using: .utf8)!)
            throw ExitCode(2)
        }
    }

    func runReplay(_ driver: CrashDriver, address: ReplayAddress) throws {
        let report = try driver.replay(address)
        print("replay \(address) of \(driver.name):")
        for line in report.details { print(line) }
        if report.problems.isEmpty {
            print("replay \(address): image keeps the contract")
        } else {
            print("replay \(address): violation")
            for problem in report.problems { print("  - \(problem)") }
            throw ExitCode(1)
        }
    }

    func runImages(_ driver: CrashDriver) throws {
        let target = images ?? (long ? 100_000 : 2000)
        let start = Date()
        var report = CrashRunReport()
        var next = seed
        var nextProgress = 10_000
        var violationCount = 0
        while report.totalImages < target {
            if let count = driver.caseCount, next >= count {
                if next == seed { throw CrashTestError.seedOutOfRange(workload: driver.name, seed: next, caseCount: count) }
                break
            }
            let run = try driver.run(next)
            for violation in run.violations where report.violations.count < violationsShown {
                print(violation)
                report.violations.append(violation)
            }
            violationCount += run.violations.count
            var counts = run
            counts.violations = []
            report.merge(counts)
            next += 1
            if long, report.totalImages >= nextProgress {
                let seconds = Date().timeIntervalSince(start)
                print("  \(report.totalImages) images, \(violationCount) violations, \(String(format: "%.0f", Double(report.totalImages) / seconds)) images/s")
                nextProgress += 10_000
            }
        }
        let seconds = Date().timeIntervalSince(start)
        let rate = Double(report.totalImages) / max(seconds, 1e-9)
        print("crash: \(report.totalImages) images, \(violationCount) violations (seed \(seed))")
        print("  \(driver.name): seeds \(seed)..<\(next), \(report.runs) runs, \(report.operationsRun) operations, "
              + "\(report.writesRecorded) writes\(report.discardsRecorded > 0 ? " (\(report.discardsRecorded) discards)" : ""), \(report.flushesRecorded) flushes, \(report.imagesChecked) images + "
              + "\(report.recoveryImagesChecked) crashed-recovery images in \(String(format: "%.1f", seconds)) s "
              + "(\(String(format: "%.0f", rate)) images/s)")
        if violationCount > 0 { throw ExitCode(1) }
    }
}

StrataCrash.main()
