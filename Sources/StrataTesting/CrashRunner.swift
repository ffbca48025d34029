// CrashRunner — runs a workload under recording, builds its crash images, reopens each, and
// checks the contract; also crashes the recovery of selected images.
//
// Theory. One run = one (workload, seed):
//
//   1. format fresh MemoryDevices (one per `DeviceSpec`) and snapshot them: the base images;
//   2. open the system on RecordingDevices of one CrashRecorder session and run the
//      operations, each logged (issue, acknowledgement) on the session clock;
//   3. generate crash images (CrashImageGenerator) and, for each, materialise overlays, open
//      the system on them (recovery), run its check, observe its state and ask the Oracle;
//   4. every `recoveryCrashEvery`-th image: open it again under a second recorder, then check
//      the crash images of that recovery against the same oracle (the recovery must keep
//      the contract of the crash it recovers from — FlyTrap's lesson). Such an image may also
//      show the state before the recovery, or the state the completed recovery leaves
//      (`SystemUnderTest.stateAfterRecovery`: a pool's import commits a new uberblock).
//
// Opens say why (`OpenPurpose`): `.workload` for step 2, `.check` for the initial state and
// step 3, `.recovery` for step 4. Effects are asked after each operation ran
// (`effects(of:performedOn:)`).
//
// Every violation carries its address (seed, step = operations issued at the crash point,
// image index[.recovery image index]) and one command that replays it; `replay(_:address:)`
// reruns steps 1–3 for that seed and checks only that image, with details. Nothing is written
// outside memory; a run is deterministic when the system under test is.

import StrataIO

/// Where a crash image sits: its index in the run's image list, and for an image of a crashed
/// recovery, the index in that recovery's list.
public struct ImageAddress: Sendable, Hashable, CustomStringConvertible {
    public let image: Int
    public let recoveryImage: Int?

    public init(image: Int, recoveryImage: Int? = nil) {
        self.image = image
        self.recoveryImage = recoveryImage
    }

    public var description: String { recoveryImage.map { "\(image).\($0)" } ?? "\(image)" }
}

/// `SEED:STEP:IMAGE[.RECOVERY]` — what a failure prints and `--replay` takes.
public struct ReplayAddress: Sendable, Hashable, CustomStringConvertible {
    public let seed: UInt64
    public let step: Int
    public let image: ImageAddress

    public init(seed: UInt64, step: Int, image: ImageAddress) {
        self.seed = seed
        self.step = step
        self.image = image
    }

    /// Parses `SEED:STEP:IMAGE` or `SEED:STEP:IMAGE.RECOVERY` (decimal numbers).
    public init(parsing text: String) throws(CrashTestError) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw .badReplay(text: text, reason: "needs three fields separated by ':'") }
        guard let seed = UInt64(parts[0]) else { throw .badReplay(text: text, reason: "seed '\(parts[0])' is not a number") }
        guard let step = Int(parts[1]), step >= 0 else { throw .badReplay(text: text, reason: "step '\(parts[1])' is not a number") }
        let imageParts = parts[2].split(separator: ".", omittingEmptySubsequences: false)
        guard imageParts.count <= 2, let image = Int(imageParts[0]), image >= 0 else {
            throw .badReplay(text: text, reason: "image '\(parts[2])' is not IMAGE or IMAGE.RECOVERY")
        }
        var recovery: Int? = nil
        if imageParts.count == 2 {
            guard let value = Int(imageParts[1]), value >= 0 else {
                throw .badReplay(text: text, reason: "recovery image '\(imageParts[1])' is not a number")
            }
            recovery = value
        }
        self.init(seed: seed, step: step, image: ImageAddress(image: image, recoveryImage: recovery))
    }

    public var description: String { "\(seed):\(step):\(image)" }
}

/// One broken promise found in one crash image.
public struct CrashViolation: Sendable, CustomStringConvertible {
    public let workload: String
    public let address: ReplayAddress
    public let image: CrashImage
    /// What is wrong (one or more lines).
    public let problems: [String]
    /// A shell command that replays exactly this image.
    public let replayCommand: String

    public var description: String {
        "violation: seed \(address.seed) step \(address.step) image \(address.image) (\(workload), \(image.kind.rawValue), crash point \(image.crashPoint)):\n"
            + problems.map { "  - \($0)" }.joined(separator: "\n")
            + "\n  replay: \(replayCommand)"
    }
}

/// The result of one run (or several, merged).
public struct CrashRunReport: Sendable {
    public var imagesChecked = 0
    public var recoveryImagesChecked = 0
    public var runs = 0
    public var writesRecorded = 0
    /// Of `writesRecorded`, the discards (recorded as writes of zeros).
    public var discardsRecorded = 0
    public var flushesRecorded = 0
    public var operationsRun = 0
    public var violations: [CrashViolation] = []

    public init() {}

    /// Crash images checked, counting those of crashed recoveries.
    public var totalImages: Int { imagesChecked + recoveryImagesChecked }

    public mutating func merge(_ other: CrashRunReport) {
        imagesChecked += other.imagesChecked
        recoveryImagesChecked += other.recoveryImagesChecked
        runs += other.runs
        writesRecorded += other.writesRecorded
        discardsRecorded += other.discardsRecorded
        flushesRecorded += other.flushesRecorded
        operationsRun += other.operationsRun
        violations += other.violations
    }
}

/// Details of one replayed image.
public struct CrashReplayReport: Sendable {
    public let address: ReplayAddress
    public let image: CrashImage
    public let problems: [String]
    /// The image, its kept writes, and the operation log up to the crash point.
    public let details: [String]
}

/// Settings of a run.
public struct CrashRunOptions: Sendable {
    public var generator: CrashImageGenerator.Options
    /// Budget of each recording session (`CrashRecorder.memoryBudgetBytes`).
    public var memoryBudgetBytes: Int
    /// Crash the recovery of every n-th image (0: never).
    public var recoveryCrashEvery: Int
    /// Images generated for each crashed recovery.
    public var recoveryGenerator: CrashImageGenerator.Options
    /// The start of the printed replay command; the runner appends ` --replay SEED:STEP:IMAGE`.
    public var replayCommandPrefix: String

    public init(generator: CrashImageGenerator.Options = .init(),
                memoryBudgetBytes: Int = CrashRecorder.memoryBudgetBytesDefault,
                recoveryCrashEvery: Int = 8,
                recoveryGenerator: CrashImageGenerator.Options = .init(randomImagesPerEpoch: 1, exhaustiveImagesMax: 8),
                replayCommandPrefix: String = "strata-crash") {
        self.generator = generator
        self.memoryBudgetBytes = memoryBudgetBytes
        self.recoveryCrashEvery = recoveryCrashEvery
        self.recoveryGenerator = recoveryGenerator
        self.replayCommandPrefix = replayCommandPrefix
    }
}

/// Runs workloads of one system under test and checks every crash image.
public final class CrashRunner<System: SystemUnderTest> {
    public let system: System
    public let options: CrashRunOptions

    public init(system: System, options: CrashRunOptions = .init()) {
        self.system = system
        self.options = options
    }

    private struct RecordedRun {
        let recording: Recording
        let oracle: Oracle<System.Key, System.Value>
        let images: [CrashImage]
        let materializer: CrashImageMaterializer
    }

    /// Runs `workload` with `seed` and checks all its crash images.
    public func run(_ workload: Workload<System.Operation>, seed: UInt64) throws(CrashTestError) -> CrashRunReport {
        let recorded = try record(workload, seed: seed)
        var report = CrashRunReport()
        report.runs = 1
        report.writesRecorded = recorded.recording.writes.count
        report.discardsRecorded = recorded.recording.writes.reduce(0) { $0 + ($1.isDiscard ? 1 : 0) }
        report.flushesRecorded = recorded.recording.flushes.count
        report.operationsRun = recorded.recording.operations.count
        for (index, image) in recorded.images.enumerated() {
            let devices = recorded.materializer.devices(for: image)
            let (problems, observed) = check(devices, oracle: recorded.oracle, crashPoint: image.crashPoint)
            report.imagesChecked += 1
            let step = recorded.recording.operationsIssued(at: image.crashPoint)
            if !problems.isEmpty {
                report.violations.append(violation(workload, seed: seed, step: step, address: ImageAddress(image: index),
                                                   image: image, problems: problems))
                continue
            }
            guard options.recoveryCrashEvery > 0, index % options.recoveryCrashEvery == 0 else { continue }
            let recovery = try recordRecovery(of: recorded, image: image, seed: seed, index: index)
            for (recoveryIndex, recoveryImage) in recovery.images.enumerated() {
                let (problems, _) = check(recovery.materializer.devices(for: recoveryImage), oracle: recorded.oracle,
                                          crashPoint: image.crashPoint, recoveringFrom: observed)
                report.recoveryImagesChecked += 1
                if !problems.isEmpty {
                    report.violations.append(violation(workload, seed: seed, step: step,
                                                       address: ImageAddress(image: index, recoveryImage: recoveryIndex),
                                                       image: image, problems: ["crash during recovery: \(recoveryImage)"] + problems))
                }
            }
        }
        return report
    }

    /// Reruns `workload` for `address.seed` and checks only the addressed image, with details.
    public func replay(_ workload: Workload<System.Operation>, address: ReplayAddress) throws(CrashTestError) -> CrashReplayReport {
        let recorded = try record(workload, seed: address.seed)
        guard address.image.image < recorded.images.count else {
            throw .replayMismatch(reason: "seed \(address.seed) gives \(recorded.images.count) images; there is no image \(address.image.image)")
        }
        let image = recorded.images[address.image.image]
        let recording = recorded.recording
        let step = recording.operationsIssued(at: image.crashPoint)
        guard step == address.step else {
            throw .replayMismatch(reason: "image \(address.image.image) of seed \(address.seed) is at step \(step), not \(address.step) (code or options changed?)")
        }
        var details = ["\(image)"]
        for persisted in image.persisted {
            let write = recording.writes[persisted.writeIndex]
            details.append("  kept w\(write.index): \(recording.devices[write.device].path) offset \(write.offset) length \(write.length)"
                           + (write.isFUA ? " FUA" : "") + (persisted.keptUnits.map { " torn, units \($0)" } ?? " whole"))
        }
        for index in recording.pendingWrites(at: image.crashPoint) where !image.persisted.contains(where: { $0.writeIndex == index }) {
            let write = recording.writes[index]
            details.append("  lost w\(write.index): \(recording.devices[write.device].path) offset \(write.offset) length \(write.length)")
        }
        for operation in recording.operations where operation.issueSequence <= image.crashPoint {
            let acknowledged = operation.isAcknowledged(at: image.crashPoint) ? "acknowledged at \(operation.acknowledgeSequence!)" : "not acknowledged"
            details.append("  op #\(operation.index + 1) \(operation.description): issued at \(operation.issueSequence), \(acknowledged)")
        }
        var devices = recorded.materializer.devices(for: image)
        var recoveringFrom: [System.Key: System.Value]? = nil
        if let recoveryIndex = address.image.recoveryImage {
            recoveringFrom = check(recorded.materializer.devices(for: image), oracle: recorded.oracle,
                                   crashPoint: image.crashPoint).observed
            let recovery = try recordRecovery(of: recorded, image: image, seed: address.seed, index: address.image.image)
            guard recoveryIndex < recovery.images.count else {
                throw .replayMismatch(reason: "the recovery of image \(address.image.image) gives \(recovery.images.count) images; there is no image \(recoveryIndex)")
            }
            details.append("recovery crash: \(recovery.images[recoveryIndex])")
            devices = recovery.materializer.devices(for: recovery.images[recoveryIndex])
        }
        let problems = check(devices, oracle: recorded.oracle, crashPoint: image.crashPoint,
                             recoveringFrom: recoveringFrom).problems
        return CrashReplayReport(address: address, image: image, problems: problems, details: details)
    }

    // MARK: Steps

    private func record(_ workload: Workload<System.Operation>, seed: UInt64) throws(CrashTestError) -> RecordedRun {
        let operations = try workload.operations(seed: seed)
        let formatted = system.devices.map {
            MemoryDevice(path: $0.name, sizeBytes: $0.sizeBytes, blockSizeBytes: $0.blockSizeBytes)
        }
        let bases: [MemoryDevice]
        let initialState: [System.Key: System.Value]
        do {
            try system.format(formatted)
            bases = formatted.map { $0.snapshot() }
            let fresh = try system.open(bases.map { OverlayDevice(base: $0) }, for: .check)
            initialState = try system.observe(fresh)
            try system.close(fresh)
        } catch {
            throw .formatFailed(system: system.name, reason: "\(error)")
        }
        let recorder = CrashRecorder(memoryBudgetBytes: options.memoryBudgetBytes)
        let devices: [any BlockStorage] = formatted.enumerated().map { recorder.record($0.element, base: bases[$0.offset]) }
        func failure(_ step: Int, _ operation: String, _ error: any Error) -> CrashTestError {
            if let exceeded = recorder.budgetExceeded {
                return .memoryBudgetExceeded(budgetBytes: options.memoryBudgetBytes, usedBytes: exceeded.usedBytes,
                                             requestedBytes: exceeded.requestedBytes)
            }
            return .operationFailed(seed: seed, step: step, operation: operation, reason: "\(error)")
        }
        let instance: System.Instance
        do { instance = try system.open(devices, for: .workload) } catch { throw failure(0, "open", error) }
        var effects: [[Effect<System.Key, System.Value>]] = []
        for (step, operation) in operations.enumerated() {
            let context = recorder.beginOperation(operation.description)
            do { try system.perform(operation, on: instance, context: context) } catch {
                throw failure(step + 1, operation.description, error)
            }
            effects.append(system.effects(of: operation, performedOn: instance))
        }
        do { try system.close(instance) } catch { throw failure(operations.count, "close", error) }
        let recording = recorder.recording()
        let oracle = Oracle(initialState: initialState, effects: effects, recording: recording)
        let images = CrashImageGenerator(options: options.generator).images(for: recording, seed: seed)
        return RecordedRun(recording: recording, oracle: oracle, images: images,
                           materializer: try CrashImageMaterializer(recording: recording))
    }

    private struct RecordedRecovery {
        let images: [CrashImage]
        let materializer: CrashImageMaterializer
    }

    /// Opens `image` under a recorder and returns the crash images of that recovery.
    private func recordRecovery(of recorded: RecordedRun, image: CrashImage, seed: UInt64, index: Int) throws(CrashTestError) -> RecordedRecovery {
        let crashed = recorded.materializer.devices(for: image)   // untouched: the recovery's base images
        let recorder = CrashRecorder(memoryBudgetBytes: options.memoryBudgetBytes)
        let devices: [any BlockStorage] = crashed.map { recorder.record(OverlayDevice(base: $0), base: $0) }
        if let instance = try? system.open(devices, for: .recovery) { try? system.close(instance) }
        if let exceeded = recorder.budgetExceeded {
            throw .memoryBudgetExceeded(budgetBytes: options.memoryBudgetBytes, usedBytes: exceeded.usedBytes,
                                        requestedBytes: exceeded.requestedBytes)
        }
        let recording = recorder.recording()
        guard !recording.writes.isEmpty else {
            return RecordedRecovery(images: [], materializer: try CrashImageMaterializer(recording: recording))
        }
        let images = CrashImageGenerator(options: options.recoveryGenerator)
            .images(for: recording, seed: seed &+ UInt64(index) &* 0x9E37_79B9)
        return RecordedRecovery(images: images, materializer: try CrashImageMaterializer(recording: recording))
    }

    /// Opens, checks and observes one image: the contract's three clauses. For an image of a
    /// crashed recovery, `recoveringFrom` is the observed state of the image that was being
    /// recovered: that state, and the state its completed recovery leaves, are allowed too.
    private func check(_ devices: [OverlayDevice], oracle: Oracle<System.Key, System.Value>, crashPoint: UInt64,
                       recoveringFrom: [System.Key: System.Value]? = nil) -> (problems: [String], observed: [System.Key: System.Value]?) {
        let instance: System.Instance
        do { instance = try system.open(devices, for: .check) } catch { return (["does not open: \(error)"], nil) }
        var problems: [String] = []
        var state: [System.Key: System.Value]? = nil
        do { problems += try system.check(instance).map { "check: \($0)" } } catch { problems.append("check failed: \(error)") }
        do {
            let observed = try system.observe(instance)
            state = observed
            if let before = recoveringFrom, observed == before || observed == system.stateAfterRecovery(before) {
                // The recovery had not committed anything yet, or had finished committing.
            } else {
                problems += oracle.verify(observed: observed, at: crashPoint)
            }
        } catch {
            problems.append("state unreadable: \(error)")
        }
        try? system.close(instance)
        return (problems, state)
    }

    private func violation(_ workload: Workload<System.Operation>, seed: UInt64, step: Int, address: ImageAddress,
                           image: CrashImage, problems: [String]) -> CrashViolation {
        let replay = ReplayAddress(seed: seed, step: step, image: address)
        return CrashViolation(workload: workload.name, address: replay, image: image, problems: problems,
                              replayCommand: "\(options.replayCommandPrefix) --workload \(workload.name) --replay \(replay)")
    }
}
