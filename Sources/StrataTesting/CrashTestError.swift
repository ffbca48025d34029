// CrashTestError — the operating errors of the harness (bad input, exhausted budgets, a system
// under test that fails outside a crash). Programmer errors (an image that names a write that
// was not pending, a negative image count) trap instead. Violations of the durability contract
// are not errors: they are results (`CrashViolation`), counted and printed with their replay
// command.

/// What can go wrong running the harness itself.
public enum CrashTestError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The recording needed more memory than its budget.
    case memoryBudgetExceeded(budgetBytes: Int, usedBytes: Int, requestedBytes: Int)
    /// A recorded device has no base image to build crash images over.
    case noBaseImage(device: String)
    /// The system under test could not be formatted or opened fresh (before any crash).
    case formatFailed(system: String, reason: String)
    /// An operation of the workload failed while running normally (no crash involved): a bug
    /// in the system under test or a workload it cannot run.
    case operationFailed(seed: UInt64, step: Int, operation: String, reason: String)
    /// No workload has this name.
    case unknownWorkload(name: String, known: [String])
    /// The workload has `caseCount` cases and the seed is not one of them.
    case seedOutOfRange(workload: String, seed: UInt64, caseCount: UInt64)
    /// A replay string that does not parse.
    case badReplay(text: String, reason: String)
    /// The replayed run does not match the address (the image index or step differ: code or
    /// options changed since the failure was printed).
    case replayMismatch(reason: String)

    public var description: String {
        switch self {
        case .memoryBudgetExceeded(let budget, let used, let requested):
            return "crash recorder memory budget exceeded: \(requested) more bytes needed with \(used) of \(budget) used; raise --memory-budget or shorten the workload"
        case .noBaseImage(let device):
            return "\(device): no base image recorded; pass base: to CrashRecorder.record"
        case .formatFailed(let system, let reason):
            return "\(system): format or first open failed: \(reason)"
        case .operationFailed(let seed, let step, let operation, let reason):
            return "seed \(seed) step \(step): operation \(operation) failed without a crash: \(reason)"
        case .unknownWorkload(let name, let known):
            return "unknown workload '\(name)' (known: \(known.joined(separator: ", ")))"
        case .seedOutOfRange(let workload, let seed, let count):
            return "workload \(workload) has \(count) cases (seeds 0..<\(count)); seed \(seed) does not exist"
        case .badReplay(let text, let reason):
            return "cannot parse replay '\(text)': \(reason) (expected SEED:STEP:IMAGE or SEED:STEP:IMAGE.RECOVERY, e.g. 42:7:113)"
        case .replayMismatch(let reason):
            return "replay does not match: \(reason)"
        }
    }
}
