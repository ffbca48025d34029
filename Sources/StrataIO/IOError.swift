// Errors of the block I/O layer.
//
// Operating errors (a missing path, a read-only file, EIO from the device, a full backlog) are
// thrown as `IOError` values that name the device and the values involved. Programmer errors
// that would corrupt memory or the kernel's view of a buffer (releasing a buffer twice,
// submitting on a closed engine) trap with `precondition` instead.

#if canImport(Glibc)
import Glibc
#endif

public enum IOError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The path does not exist (and creation was not asked for).
    case notFound(path: String)
    /// The path is a directory, a socket or something else that is not a file or block device.
    case notAFileOrBlockDevice(path: String, kind: String)
    /// The file or device cannot be opened for writing.
    case readOnly(path: String)
    /// Smaller than the size asked for.
    case tooSmall(path: String, sizeBytes: UInt64, requiredBytes: UInt64)
    /// A block device that is mounted, held by another driver or opened exclusively elsewhere.
    case busy(path: String, reason: String)
    /// Offset, length or buffer address not aligned to the device's logical block size.
    case misaligned(path: String, what: String, value: UInt64, alignment: UInt64)
    /// The range [offset, offset+length) is outside the device.
    case outOfRange(path: String, offset: UInt64, length: UInt64, sizeBytes: UInt64)
    /// A length of zero or above the per-request maximum.
    case badLength(path: String, length: UInt64, maximum: UInt64)
    /// An errno from a system call that is not one of the cases above.
    case system(path: String, operation: String, errno: Int32)
    /// The device returned an error for an I/O (EIO and friends), with the request's range.
    case device(path: String, operation: String, offset: UInt64, length: UInt64, errno: Int32)
    /// The engine's backlog (queued + in-flight + unreaped requests) is full: reap first.
    case backlogFull(slots: Int)
    /// The buffer pool has no space left for a request of this size.
    case bufferPoolExhausted(requestedBytes: Int, budgetBytes: Int)
    /// The requested engine cannot be used on this machine.
    case engineUnavailable(engine: String, reason: String)
    /// A bad configuration value.
    case invalidConfiguration(name: String, value: String, reason: String)

    public var description: String {
        switch self {
        case .notFound(let path): return "\(path): no such file or device"
        case .notAFileOrBlockDevice(let path, let kind):
            return "\(path): is a \(kind), not a regular file or block device"
        case .readOnly(let path): return "\(path): not writable (read-only file, device or file system)"
        case .tooSmall(let path, let size, let required):
            return "\(path): size \(size) bytes is smaller than the \(required) bytes required"
        case .busy(let path, let reason): return "\(path): busy: \(reason)"
        case .misaligned(let path, let what, let value, let alignment):
            return "\(path): \(what) \(value) is not a multiple of the \(alignment)-byte block size"
        case .outOfRange(let path, let offset, let length, let size):
            return "\(path): range offset \(offset) length \(length) is past the end (size \(size) bytes)"
        case .badLength(let path, let length, let maximum):
            return "\(path): length \(length) must be in 1...\(maximum)"
        case .system(let path, let operation, let errno):
            return "\(path): \(operation) failed: \(IOError.errnoName(errno))"
        case .device(let path, let operation, let offset, let length, let errno):
            return "\(path): \(operation) at offset \(offset) length \(length) failed: \(IOError.errnoName(errno))"
        case .backlogFull(let slots): return "I/O engine backlog full (\(slots) slots): reap completions first"
        case .bufferPoolExhausted(let requested, let budget):
            return "aligned buffer pool exhausted: \(requested) bytes requested, budget \(budget) bytes"
        case .engineUnavailable(let engine, let reason): return "\(engine) engine unavailable: \(reason)"
        case .invalidConfiguration(let name, let value, let reason):
            return "invalid setting \(name)=\(value): \(reason)"
        }
    }

    /// "EIO (Input/output error)".
    public static func errnoName(_ code: Int32) -> String {
        let names: [Int32: String] = [
            EPERM: "EPERM", ENOENT: "ENOENT", EINTR: "EINTR", EIO: "EIO", EBADF: "EBADF",
            EAGAIN: "EAGAIN", ENOMEM: "ENOMEM", EACCES: "EACCES", EFAULT: "EFAULT", EBUSY: "EBUSY",
            EEXIST: "EEXIST", EINVAL: "EINVAL", ENOSPC: "ENOSPC", EROFS: "EROFS", ENOSYS: "ENOSYS",
            EOPNOTSUPP: "EOPNOTSUPP", ECANCELED: "ECANCELED", EISDIR: "EISDIR", ENXIO: "ENXIO",
            ENODEV: "ENODEV",
        ]
        let message = String(cString: strerror(code))
        return "\(names[code] ?? "errno \(code)") (\(message))"
    }
}
