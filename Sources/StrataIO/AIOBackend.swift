// AIOBackend — Linux native AIO through libaio, for machines where io_uring is off.
//
// Same semantics as the io_uring backend (the core provides them): O_DIRECT reads and writes,
// FUA as RWF_DSYNC in `aio_rw_flags` (kernel 4.13+), flush as IOCB_CMD_FDSYNC (4.18+). There
// are no fixed buffers or files. io_submit may take only part of a batch or return EAGAIN; the
// rest stays queued, in order, for the next call. One iocb per slot, allocated up front.

#if canImport(Glibc)
import Glibc
#endif
import CShims

public struct AIOBackend: IOBackend, ~Copyable {
    public static var kind: IOEngineKind { .libaio }

    @usableFromInline var context: io_context_t?
    @usableFromInline let iocbs: UnsafeMutablePointer<iocb>
    @usableFromInline let queued: UnsafeMutablePointer<UnsafeMutablePointer<iocb>?>
    @usableFromInline var prepared = 0
    @usableFromInline let events: UnsafeMutablePointer<io_event>
    @usableFromInline let eventsMax: Int
    @usableFromInline var eventsReady = 0
    @usableFromInline var eventsConsumed = 0
    @usableFromInline let fileDescriptors: UnsafeMutablePointer<Int32>
    @usableFromInline let zeroTimeout: UnsafeMutablePointer<timespec>

    public var preparedCount: Int { prepared }

    public init(devices: [BlockDevice], configuration: IOEngineConfiguration) throws(IOError) {
        var context: io_context_t? = nil
        let rc = io_setup(Int32(configuration.queueDepth), &context)
        guard rc == 0 else {
            throw .engineUnavailable(engine: "libaio", reason: "io_setup(\(configuration.queueDepth)): \(IOError.errnoName(-rc)) (see /proc/sys/fs/aio-max-nr)")
        }
        self.context = context
        let slotCount = configuration.queueDepth + configuration.backlogMax
        iocbs = .allocate(capacity: slotCount)
        iocbs.initialize(repeating: iocb(), count: slotCount)
        queued = .allocate(capacity: configuration.queueDepth)
        queued.initialize(repeating: nil, count: configuration.queueDepth)
        eventsMax = configuration.queueDepth
        events = .allocate(capacity: eventsMax)
        events.initialize(repeating: io_event(), count: eventsMax)
        fileDescriptors = .allocate(capacity: max(devices.count, 1))
        for (index, device) in devices.enumerated() { fileDescriptors[index] = device.fileDescriptor }
        zeroTimeout = .allocate(capacity: 1)
        zeroTimeout.initialize(to: timespec(tv_sec: 0, tv_nsec: 0))
    }

    deinit {
        _ = io_destroy(context)
        iocbs.deallocate()
        queued.deallocate()
        events.deallocate()
        fileDescriptors.deallocate()
        zeroTimeout.deallocate()
    }

    public mutating func register(_ pool: AlignedBufferPool) -> Bool { false }

    @inlinable
    public mutating func prepare(slot: Int32, operation: IOOperation, deviceIndex: Int, address: UnsafeMutableRawPointer?,
                                 length: Int, offset: UInt64, registeredIndex: Int32) {
        let control = iocbs + Int(slot)
        let fd = fileDescriptors[deviceIndex]
        switch operation {
        case .flush:
            CShims_aio_prep_fdatasync(control, fd, UInt64(slot))
        case .read, .write, .writeFUA:
            CShims_aio_prep_rw(control, operation.isWrite ? 1 : 0, fd, address, length, Int64(offset),
                               operation == .writeFUA ? CShims_RWF_DSYNC : 0, UInt64(slot))
        }
        precondition(prepared < eventsMax, "libaio: more than queueDepth requests prepared")
        queued[prepared] = control
        prepared += 1
    }

    @inlinable
    public mutating func enter(waitCount: Int) -> Int32 {
        while prepared > 0 {
            let rc = io_submit(context, prepared, queued)
            if rc < 0 { return rc }   // EAGAIN: the core reaps and retries; EINTR: retried
            if rc == 0 { return -EAGAIN }
            let taken = Int(rc)
            if taken < prepared {
                (queued).update(from: queued + taken, count: prepared - taken)
            }
            prepared -= taken
        }
        return waitCount > 0 ? waitForCompletions(waitCount) : 0
    }

    @inlinable
    public mutating func waitForCompletion() -> Int32 { waitForCompletions(1) }

    /// Blocks in io_getevents until `count` events are in; they wait in `events` for `harvest`.
    @inlinable
    mutating func waitForCompletions(_ count: Int) -> Int32 {
        guard eventsConsumed == eventsReady else { return 0 }
        let rc = io_getevents(context, count, eventsMax, events, nil)
        if rc < 0 { return rc }
        eventsReady = Int(rc)
        eventsConsumed = 0
        return 0
    }

    @inlinable
    public mutating func harvest(_ body: (Int32, Int32) -> Void) -> Int {
        if eventsConsumed == eventsReady {
            let rc = io_getevents(context, 0, eventsMax, events, zeroTimeout)
            guard rc > 0 else { return 0 }
            eventsReady = Int(rc)
            eventsConsumed = 0
        }
        let count = eventsReady - eventsConsumed
        for index in eventsConsumed..<eventsReady {
            let event = events + index
            body(Int32(truncatingIfNeeded: CShims_aio_event_user_data(event)),
                 Int32(truncatingIfNeeded: CShims_aio_event_result(event)))
        }
        eventsConsumed = eventsReady
        return count
    }
}

public typealias AIOEngine = ScheduledEngine<AIOBackend>
