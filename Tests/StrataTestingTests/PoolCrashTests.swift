// The pool as the first real client of the crash harness (issue 5, part 7): crash images over
// pool create, policy changes, exports, imports and a sequence of uberblock commits, on a
// one-device pool, a tiered pool (data, metadata, log) and a tiered pool with mirrored metadata.
// The pool must always import, to the last uberblock whose commit returned or a later one, with
// the policy of that generation and bit-exact space maps. The CI budget: ≥ 2,000 pool images
// (the one-device test alone), in tens of seconds of a debug build. And the harness proves it
// can fail: over devices that ignore flushes, or let writes land after the flush that should
// cover them (a pool that skipped its flush before the uberblock), it finds violations, and each
// replays from its printed address.

import StrataIO
@_spi(CrashTesting) import StrataPool
import StrataPoolCrash
import Testing
@testable import StrataTesting

@Suite struct PoolCrashTests {
    func run(_ system: PoolCrashSystem, _ workload: Workload<PoolOperation>, seeds: [UInt64]) throws -> CrashRunReport {
        let runner = CrashRunner(system: system)
        var report = CrashRunReport()
        for seed in seeds { report.merge(try runner.run(workload, seed: seed)) }
        return report
    }

    func expectClean(_ report: CrashRunReport) {
        #expect(report.violations.isEmpty, "\(report.violations.prefix(3).map(\.description).joined(separator: "\n"))")
    }

    @Test func onePoolDeviceKeepsTheContractOverTwoThousandImages() throws {
        let entry = try PoolCrashSystem.workload(named: "pool-random-single")
        let report = try run(entry.system, entry.workload, seeds: Array(0..<8))
        expectClean(report)
        #expect(report.totalImages >= 2000, "only \(report.totalImages) images")
        #expect(report.recoveryImagesChecked > 0)
    }

    @Test func tieredPoolKeepsTheContract() throws {
        let entry = try PoolCrashSystem.workload(named: "pool-random")
        var report = try run(entry.system, entry.workload, seeds: [0])
        // ACE case 3: create, commit, export, import.
        let ace = try PoolCrashSystem.workload(named: "pool-ace-2")
        #expect(try ace.workload.operations(seed: 3).map(\.description).suffix(2) == ["export", "import"])
        report.merge(try run(ace.system, ace.workload, seeds: [3]))
        expectClean(report)
        #expect(report.recoveryImagesChecked > 0)
    }

    @Test func mirroredMetadataKeepsTheContract() throws {
        let entry = try PoolCrashSystem.workload(named: "pool-random-mirror")
        #expect(entry.system.policy.copies(for: .metadata) == 2)
        let report = try run(entry.system, entry.workload, seeds: [0])
        expectClean(report)
    }

    /// Before create returns, an image may hold no importable pool; once it has returned, every
    /// image imports, at checkpoint 1 or later.
    @Test func createIsCrashedAndImportsOnceItReturned() throws {
        let system = PoolCrashSystem(layout: .tiered)
        let blank = system.devices.map { MemoryDevice(path: $0.name, sizeBytes: $0.sizeBytes) }
        let recorder = CrashRecorder()
        let devices: [any BlockStorage] = blank.map { recorder.record($0) }
        let handle = try system.open(devices, for: .workload)
        try system.perform(.create, on: handle, context: recorder.beginOperation("create"))
        try system.perform(.commit(tag: 1, allocations: [PoolAllocationRequest(.data, lengthBytes: 1 << 20)], frees: []),
                           on: handle, context: recorder.beginOperation("commit"))
        let recording = recorder.recording()
        let createReturned = recording.operations[0].acknowledgeSequence!
        let materializer = try CrashImageMaterializer(recording: recording)
        var unimportableBefore = 0, importableBefore = 0
        for image in CrashImageGenerator().images(for: recording, seed: 7) {
            let checked = try system.open(materializer.devices(for: image), for: .check)
            if image.crashPoint < createReturned {
                if checked.pool == nil { unimportableBefore += 1 } else { importableBefore += 1 }
            } else {
                #expect(checked.pool != nil, "\(image): \(checked.importError ?? "")")
                #expect((checked.pool?.uberblock.checkpoint ?? 0) >= 1)
            }
        }
        #expect(unimportableBefore > 0)
        #expect(importableBefore > 0)   // create's uberblock durable on one device before create returned
    }

    /// The harness catches a pool whose devices break the flush contract; each violation replays.
    @Test(arguments: FlushFaultDevice.Fault.allCases)
    func brokenFlushIsCaught(fault: FlushFaultDevice.Fault) throws {
        let entry = try PoolCrashSystem.workload(named: "pool-random-single")
        let system = PoolCrashSystem(layout: .single, fault: fault)
        let report = try run(system, entry.workload, seeds: [0, 1])
        #expect(!report.violations.isEmpty, "fault \(fault.rawValue) passed \(report.totalImages) crash images")
        if let violation = report.violations.first(where: { $0.address.image.recoveryImage == nil }) {
            let replayed = try CrashRunner(system: system).replay(entry.workload, address: violation.address)
            #expect(replayed.problems == violation.problems)
        }
    }

    /// Commits of a multi-device pool run in device order under the harness, so a seed gives the
    /// same recording and images every time, and any image replays to the same verdict.
    @Test func runsAreDeterministicAndReplay() throws {
        let entry = try PoolCrashSystem.workload(named: "pool-ace-2")
        let runner = CrashRunner(system: entry.system)
        let first = try runner.run(entry.workload, seed: 0)
        let second = try runner.run(entry.workload, seed: 0)
        #expect(first.imagesChecked == second.imagesChecked && first.writesRecorded == second.writesRecorded
                && first.flushesRecorded == second.flushesRecorded && first.recoveryImagesChecked == second.recoveryImagesChecked)
        let replayed = try runner.replay(entry.workload, address: ReplayAddress(seed: 0, step: 3, image: ImageAddress(image: first.imagesChecked - 1)))
        #expect(replayed.problems.isEmpty)
        #expect(replayed.details.contains { $0.contains("op #3 commit root#10") })
    }

    /// The pool without its `stateAfterRecovery`: the harness's default (recovery changes
    /// nothing observable) is wrong for a pool, whose read-write import commits a checkpoint.
    struct PoolWithoutRecoveryState: SystemUnderTest {
        let pool: PoolCrashSystem
        var name: String { pool.name }
        var devices: [DeviceSpec] { pool.devices }
        func format(_ devices: [any BlockStorage]) throws { try pool.format(devices) }
        func open(_ devices: [any BlockStorage]) throws -> PoolHandle { try pool.open(devices) }
        func open(_ devices: [any BlockStorage], for purpose: OpenPurpose) throws -> PoolHandle { try pool.open(devices, for: purpose) }
        func perform(_ operation: PoolOperation, on handle: PoolHandle, context: OperationContext) throws {
            try pool.perform(operation, on: handle, context: context)
        }
        func check(_ handle: PoolHandle) throws -> [String] { try pool.check(handle) }
        func observe(_ handle: PoolHandle) throws -> [String: PoolSnapshot] { try pool.observe(handle) }
        func effects(of operation: PoolOperation) -> [Effect<String, PoolSnapshot>] { [] }
        func effects(of operation: PoolOperation, performedOn handle: PoolHandle) -> [Effect<String, PoolSnapshot>] {
            pool.effects(of: operation, performedOn: handle)
        }
    }

    /// Crash during recovery crashes the pool's read-write import: its images show the commit
    /// that import makes (checkpoint + 1), which only `stateAfterRecovery` allows.
    @Test func crashDuringRecoveryCrashesTheReadWriteImport() throws {
        let entry = try PoolCrashSystem.workload(named: "pool-random-single")
        let report = try CrashRunner(system: PoolWithoutRecoveryState(pool: entry.system)).run(entry.workload, seed: 0)
        let recoveryViolations = report.violations.filter { $0.address.image.recoveryImage != nil }
        #expect(!recoveryViolations.isEmpty)
        #expect(recoveryViolations.count == report.violations.count, "only crashed recoveries differ")
        #expect(try CrashRunner(system: entry.system).run(entry.workload, seed: 0).violations.isEmpty)
    }

    @Test func workloadsAreWellFormed() throws {
        #expect(PoolCrashSystem.aceWorkload(lengthMax: 3).caseCount == 5 + 25 + 125)
        #expect(PoolCrashSystem.aceWorkload(lengthMax: 2).caseCount == 30)
        for entry in PoolCrashSystem.workloads {
            let seeds: [UInt64] = entry.workload.caseCount.map { [0, $0 - 1] } ?? [0, 1, 2, 99]
            for seed in seeds {
                let operations = try entry.workload.operations(seed: seed)
                #expect(operations.first?.description == "create")
                // An export is always followed by an import.
                for (index, operation) in operations.enumerated() where operation.description == "export" {
                    #expect(index + 1 < operations.count && operations[index + 1].description == "import")
                }
            }
        }
        #expect(throws: CrashTestError.self) { _ = try PoolCrashSystem.workload(named: "pool-nope") }
    }
}
