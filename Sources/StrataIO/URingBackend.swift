// URingBackend — io_uring through liburing 2.3.
//
// Setup follows fio's engine: CQSIZE (2 × depth) | COOP_TASKRUN | SINGLE_ISSUER |
// DEFER_TASKRUN, and on EINVAL drop DEFER_TASKRUN + SINGLE_ISSUER, then COOP_TASKRUN, then
// CQSIZE. ENOSYS/EPERM mean io_uring is off (sysctl kernel.io_uring_disabled, or a seccomp
// filter): the factory falls back to libaio. Devices are registered as fixed files and the
// buffer pool's slabs as fixed buffers (READ_FIXED/WRITE_FIXED). FUA is a write with
// RWF_DSYNC; flush is IORING_OP_FSYNC with IORING_FSYNC_DATASYNC.
//
// `struct io_uring` and the CQE copy-out arrays live in allocated memory: the kernel and
// liburing keep pointers into the ring structure for its whole life.

#if canImport(Glibc)
import Glibc
#endif
import CShims

public struct URingBackend: IOBackend, ~Copyable {
    public static var kind: IOEngineKind { .ioUring }

    @usableFromInline let ring: UnsafeMutablePointer<io_uring>
    @usableFromInline let userData: UnsafeMutablePointer<UInt64>
    @usableFromInline let results: UnsafeMutablePointer<Int32>
    @usableFromInline let harvestMax: Int
    @usableFromInline let fileDescriptors: UnsafeMutablePointer<Int32>
    @usableFromInline let fixedFiles: Bool
    @usableFromInline var prepared = 0
    public let setupFlags: UInt32
    let paths: String

    public var preparedCount: Int { prepared }

    public init(devices: [BlockDevice], configuration: IOEngineConfiguration) throws(IOError) {
        paths = devices.map(\.path).joined(separator: ", ")
        ring = .allocate(capacity: 1)
        ring.initialize(to: io_uring())
        let depth = UInt32(configuration.queueDepth)
        let full = IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN
        var attempts: [UInt32] = [IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN, IORING_SETUP_CQSIZE, 0]
        if configuration.ringTaskrunFlags { attempts.insert(full, at: 0) } else { attempts = [IORING_SETUP_CQSIZE, 0] }
        var chosen: UInt32? = nil
        var lastError: Int32 = 0
        for flags in attempts {
            var params = io_uring_params()
            params.flags = flags
            params.cq_entries = depth * 2
            let rc = io_uring_queue_init_params(depth, ring, &params)
            if rc == 0 { chosen = flags; break }
            lastError = -rc
            if lastError != EINVAL { break }
        }
        guard let flags = chosen else {
            ring.deallocate()
            let reason: String
            switch lastError {
            case ENOSYS: reason = "io_uring_setup: ENOSYS (kernel without io_uring, or blocked by a seccomp filter)"
            case EPERM: reason = "io_uring_setup: EPERM (kernel.io_uring_disabled or a seccomp filter)"
            case ENOMEM: reason = "io_uring_setup: ENOMEM"
            default: reason = "io_uring_setup: \(IOError.errnoName(lastError))"
            }
            throw .engineUnavailable(engine: "io_uring", reason: reason)
        }
        setupFlags = flags
        harvestMax = configuration.queueDepth * 2
        userData = .allocate(capacity: harvestMax)
        results = .allocate(capacity: harvestMax)
        fileDescriptors = .allocate(capacity: max(devices.count, 1))
        for (index, device) in devices.enumerated() { fileDescriptors[index] = device.fileDescriptor }
        let rc = devices.isEmpty ? -EINVAL : io_uring_register_files(ring, fileDescriptors, UInt32(devices.count))
        if rc != 0 && !devices.isEmpty {
            Diagnostics.log("io_uring: registering \(devices.count) file(s) failed (\(IOError.errnoName(-rc))); using plain file descriptors")
        }
        fixedFiles = rc == 0
    }

    deinit {
        io_uring_queue_exit(ring)
        ring.deallocate()
        userData.deallocate()
        results.deallocate()
        fileDescriptors.deallocate()
    }

    public mutating func register(_ pool: AlignedBufferPool) -> Bool {
        let rc = io_uring_register_buffers(ring, pool.iovecs, UInt32(pool.slabCount))
        if rc == 0 { return true }
        if -rc == ENOMEM {
            Diagnostics.log("io_uring: registering \(pool.budgetBytes >> 20) MiB of buffers failed with ENOMEM (RLIMIT_MEMLOCK); using unregistered buffers")
        } else {
            Diagnostics.log("io_uring: registering buffers failed (\(IOError.errnoName(-rc))); using unregistered buffers")
        }
        return false
    }

    @inlinable
    public mutating func prepare(slot: Int32, operation: IOOperation, deviceIndex: Int, address: UnsafeMutableRawPointer?,
                                 length: Int, offset: UInt64, registeredIndex: Int32) {
        guard let sqe = io_uring_get_sqe(ring) else {
            preconditionFailure("io_uring SQ full: the core never has more than queueDepth requests prepared")
        }
        let file = fixedFiles ? Int32(deviceIndex) : fileDescriptors[deviceIndex]
        switch operation {
        case .flush:
            CShims_io_uring_prep_fdatasync(sqe, file, fixedFiles ? 1 : 0, UInt64(slot))
        case .read, .write, .writeFUA:
            CShims_io_uring_prep_rw(sqe, operation.isWrite ? 1 : 0, file, fixedFiles ? 1 : 0, address, UInt32(length), offset,
                                    registeredIndex, operation == .writeFUA ? CShims_RWF_DSYNC : 0, UInt64(slot))
        }
        prepared += 1
    }

    @inlinable
    public mutating func enter(waitCount: Int) -> Int32 {
        let rc: Int32
        if waitCount > 0 {
            rc = io_uring_submit_and_wait(ring, UInt32(waitCount))
        } else if prepared > 0 {
            rc = io_uring_submit(ring)
        } else {
            // DEFER_TASKRUN: completions are posted only when we enter the kernel.
            rc = io_uring_get_events(ring)
        }
        if rc < 0 { return rc }
        if rc >= 0 && (waitCount > 0 || prepared > 0) { prepared = 0 }
        return 0
    }

    @inlinable
    public mutating func waitForCompletion() -> Int32 {
        // io_uring_wait_cqe enters with GETEVENTS and nothing to submit; the CQE stays in the
        // ring for `harvest`.
        var cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
        return io_uring_wait_cqe(ring, &cqe)
    }

    @inlinable
    public mutating func harvest(_ body: (Int32, Int32) -> Void) -> Int {
        let count = Int(CShims_io_uring_reap(ring, userData, results, UInt32(harvestMax)))
        for index in 0..<count { body(Int32(truncatingIfNeeded: userData[index]), results[index]) }
        return count
    }
}

public typealias URingEngine = ScheduledEngine<URingBackend>

extension ScheduledEngine where Backend == URingBackend {
    /// The io_uring setup flags the kernel accepted.
    public var ringSetupFlags: UInt32 { backend.setupFlags }
}
