// ScheduledEngine — the engine core shared by the io_uring and libaio backends.
//
// Theory. The core owns a fixed table of request slots (queueDepth + backlogMax), made once at
// init. A slot moves through states:
//
//     free ──submit──▶ held ──predecessor ok──▶ pending ──dispatch──▶ inFlight ──▶ completed ──reap──▶ free
//                        └──predecessor failed──────────────────────────────────▶ completed (ECANCELED)
//                  submit (unlinked) ──▶ pending
//
// Queues are intrusive FIFO lists threaded through the slots (`next`), so queueing allocates
// nothing. `dispatch` moves pending slots into the kernel while fewer than `queueDepth` are in
// flight, choosing by the priority table (ZFS vdev queue): reads up to their minimum, writes
// up to their minimum, then reads up to their maximum, then writes up to theirs. With the
// defaults (read min 1, write min QD/8, both max QD) a read waits behind at most the writes
// already in the kernel, while a read flood still leaves QD/8 slots to writes.
//
// A backend (io_uring or libaio) only prepares kernel requests for slots, pushes them to the
// kernel, and reports (slot, result) pairs. Everything with semantics — short transfers,
// retries, links, priorities, fault injection — lives here once, so both engines behave the
// same and one conformance suite covers both.
//
// Invariants (checked): inFlight == readsInFlight + writesInFlight <= queueDepth; a slot is in
// exactly one queue or in the kernel; a slot's buffer is present from submit until reap when
// its operation uses one; bytes done never exceed the request's length.

#if canImport(Glibc)
import Glibc
#endif
import CShims

/// What a backend does: prepare kernel requests, push them, report completions.
public protocol IOBackend: ~Copyable {
    static var kind: IOEngineKind { get }
    /// Sets up the kernel queue for `devices` (in this order: the device index of a request).
    init(devices: [BlockDevice], configuration: IOEngineConfiguration) throws(IOError)
    /// Prepares one kernel request for `slot`, sent at the next `enter`.
    mutating func prepare(slot: Int32, operation: IOOperation, deviceIndex: Int, address: UnsafeMutableRawPointer?,
                          length: Int, offset: UInt64, registeredIndex: Int32)
    /// Sends prepared requests, then waits until `waitCount` completions are available (0: no
    /// wait). Returns 0 or a negative errno (EINTR, EAGAIN, EBUSY: the core harvests and retries).
    mutating func enter(waitCount: Int) -> Int32
    /// Waits, without submitting anything, until at least one completion is available. Used
    /// when submission itself is refused (EAGAIN/EBUSY) and only a completion can make room.
    mutating func waitForCompletion() -> Int32
    /// Copies out the completions that are ready, without blocking.
    mutating func harvest(_ body: (Int32, Int32) -> Void) -> Int
    /// Registers the pool's slabs as fixed buffers. False when unsupported or refused.
    mutating func register(_ pool: AlignedBufferPool) -> Bool
    var preparedCount: Int { get }
}

@usableFromInline
enum SlotState: UInt8 {
    case free, held, pending, inFlight, completed
}

@usableFromInline
struct RequestSlot {
    @usableFromInline var tag: UInt64 = 0
    @usableFromInline var offset: UInt64 = 0
    @usableFromInline var address: UnsafeMutableRawPointer? = nil
    @usableFromInline var length: Int = 0
    @usableFromInline var done: Int = 0
    @usableFromInline var next: Int32 = -1
    @usableFromInline var chainNext: Int32 = -1
    @usableFromInline var registeredIndex: Int32 = -1
    @usableFromInline var errno: Int32 = 0
    @usableFromInline var deviceIndex: Int32 = 0
    @usableFromInline var operation: IOOperation = .read
    @usableFromInline var state: SlotState = .free
    @usableFromInline init() {}
}

/// FIFO of slot indices threaded through `RequestSlot.next`.
@usableFromInline
struct SlotQueue {
    @usableFromInline var head: Int32 = -1
    @usableFromInline var tail: Int32 = -1
    @usableFromInline var count: Int = 0
    @usableFromInline init() {}
    @inlinable var isEmpty: Bool { head < 0 }

    @inlinable
    mutating func push(_ slot: Int32, _ slots: UnsafeMutablePointer<RequestSlot>) {
        slots[Int(slot)].next = -1
        if tail >= 0 { slots[Int(tail)].next = slot } else { head = slot }
        tail = slot
        count += 1
    }

    @inlinable
    mutating func pop(_ slots: UnsafeMutablePointer<RequestSlot>) -> Int32 {
        let slot = head
        precondition(slot >= 0, "pop from an empty slot queue")
        head = slots[Int(slot)].next
        if head < 0 { tail = -1 }
        slots[Int(slot)].next = -1
        count -= 1
        return slot
    }
}

public final class ScheduledEngine<Backend: IOBackend & ~Copyable>: IOEngine {
    public let devices: [BlockDevice]
    public let configuration: IOEngineConfiguration
    public var kind: IOEngineKind { Backend.kind }
    @usableFromInline var stats = IOEngineStatistics()
    public var statistics: IOEngineStatistics { stats }

    @usableFromInline var backend: Backend
    @usableFromInline let slots: UnsafeMutablePointer<RequestSlot>
    @usableFromInline let buffers: UnsafeMutablePointer<IOBuffer?>
    @usableFromInline let slotCount: Int
    @usableFromInline var freeList = SlotQueue()
    @usableFromInline var pendingReads = SlotQueue()
    @usableFromInline var pendingWrites = SlotQueue()
    @usableFromInline var completed = SlotQueue()
    @usableFromInline var readsInFlight = 0
    @usableFromInline var writesInFlight = 0
    @usableFromInline var heldCount = 0
    /// Link bookkeeping: the slot the next submission is ordered after, if it is still live.
    @usableFromInline var linkTail: Int32 = -1
    /// The previous submission asked for a link, and its outcome when it was already reaped.
    @usableFromInline var linkOpen = false
    @usableFromInline var linkPredecessorErrno: Int32 = 0
    @usableFromInline var registeredPoolIdentifier: UInt32 = 0
    @usableFromInline var faultCounter: UInt64 = 0
    @usableFromInline let queueDepth: Int
    @usableFromInline let submitBatch: Int
    /// Fault injection is off in production: one Bool tested per completion, no struct copies.
    @usableFromInline let faultsEnabled: Bool
    @usableFromInline let shortTransferBytesMax: Int
    @usableFromInline let readMin: Int, readMax: Int, writeMin: Int, writeMax: Int

    init(devices: [BlockDevice], configuration: IOEngineConfiguration, backend: consuming Backend) {
        self.devices = devices
        self.configuration = configuration
        self.backend = backend
        queueDepth = configuration.queueDepth
        submitBatch = configuration.submitBatch
        faultsEnabled = configuration.faults != nil
        shortTransferBytesMax = configuration.faults?.shortTransferBytesMax ?? Int.max
        readMin = configuration.readInFlightMin
        readMax = configuration.readInFlightMax
        writeMin = configuration.writeInFlightMin
        writeMax = configuration.writeInFlightMax
        slotCount = configuration.queueDepth + configuration.backlogMax
        slots = .allocate(capacity: slotCount)
        slots.initialize(repeating: RequestSlot(), count: slotCount)
        buffers = .allocate(capacity: slotCount)
        for slot in 0..<slotCount { (buffers + slot).initialize(to: nil) }
        for slot in 0..<Int32(slotCount) { freeList.push(slot, slots) }
    }

    deinit {
        // Requests still in the kernel reference our buffers: wait for them before freeing.
        while readsInFlight + writesInFlight > 0 {
            _ = backend.enter(waitCount: 1)
            harvestAll()
        }
        for slot in 0..<slotCount { _ = (buffers + slot).move() }
        buffers.deallocate()
        slots.deallocate()
    }

    /// An engine over `devices` (their order gives each request's `deviceIndex`).
    public convenience init(devices: [BlockDevice], configuration: IOEngineConfiguration = IOEngineConfiguration()) throws(IOError) {
        try configuration.validate()
        let backend = try Backend(devices: devices, configuration: configuration)
        self.init(devices: devices, configuration: configuration, backend: backend)
    }

    public var outstandingCount: Int { slotCount - freeList.count }
    @inlinable var inFlight: Int { readsInFlight + writesInFlight }

    public func usesRegisteredBuffers(of pool: AlignedBufferPool) -> Bool {
        registeredPoolIdentifier != 0 && registeredPoolIdentifier == pool.identifier
    }

    @discardableResult
    public func register(_ pool: AlignedBufferPool) -> Bool {
        guard configuration.registerBuffers else { return false }
        if backend.register(pool) {
            registeredPoolIdentifier = pool.identifier
            return true
        }
        return false
    }

    // MARK: Submission

    @inlinable
    public func submit(_ operation: IOOperation, deviceIndex: Int, offset: UInt64, buffer: consuming IOBuffer?,
                       tag: UInt64, linkNext: Bool) throws(IOError) {
        guard deviceIndex >= 0, deviceIndex < devices.count else {
            throw .invalidConfiguration(name: "deviceIndex", value: "\(deviceIndex)",
                                        reason: "engine has \(devices.count) device(s)")
        }
        let device = devices[deviceIndex]
        var address: UnsafeMutableRawPointer? = nil
        var length = 0
        var registeredIndex: Int32 = -1
        if operation.usesBuffer {
            guard let info = describe(buffer) else {
                throw .badLength(path: device.path, length: 0, maximum: BlockDevice.requestBytesMax)
            }
            address = info.address
            length = info.count
            try device.validate(offset: offset, length: length, address: address, write: operation.isWrite)
            if registeredPoolIdentifier != 0, info.poolIdentifier == registeredPoolIdentifier {
                registeredIndex = info.slabIndex
            }
        } else if device.isReadOnly {
            throw .readOnly(path: device.path)
        }
        guard !freeList.isEmpty else { throw .backlogFull(slots: slotCount) }
        let slot = freeList.pop(slots)
        precondition(slots[Int(slot)].state == .free, "slot on the free list must be free")
        var request = RequestSlot()
        request.tag = tag
        request.offset = offset
        request.address = address
        request.length = length
        request.registeredIndex = registeredIndex
        request.deviceIndex = Int32(deviceIndex)
        request.operation = operation
        slots[Int(slot)] = request
        (buffers + Int(slot)).pointee = buffer
        stats.submitted &+= 1

        if linkOpen {
            if linkTail >= 0 {
                // The predecessor is live: held, pending, in flight or completed-unreaped.
                let predecessor = Int(linkTail)
                switch slots[predecessor].state {
                case .held, .pending, .inFlight:
                    slots[predecessor].chainNext = slot
                    slots[Int(slot)].state = .held
                    heldCount += 1
                case .completed:
                    if slots[predecessor].errno == 0 { enqueuePending(slot) } else { cancel(slot) }
                case .free:
                    preconditionFailure("link tail slot \(predecessor) is free")
                }
            } else if linkPredecessorErrno != 0 {
                cancel(slot)
            } else {
                enqueuePending(slot)
            }
        } else {
            enqueuePending(slot)
        }
        linkOpen = linkNext
        linkTail = linkNext ? slot : -1
        linkPredecessorErrno = 0
        dispatch()
        if backend.preparedCount >= submitBatch { try enter(waitCount: 0) }
    }

    @inlinable
    func describe(_ buffer: borrowing IOBuffer?) -> (address: UnsafeMutableRawPointer, count: Int, slabIndex: Int32, poolIdentifier: UInt32)? {
        switch buffer {
        case .some(let present): return (present.baseAddress, present.count, present.slabIndex, present.poolIdentifier)
        case .none: return nil
        }
    }

    @inlinable
    func enqueuePending(_ slot: Int32) {
        slots[Int(slot)].state = .pending
        if slots[Int(slot)].operation.isReadClass { pendingReads.push(slot, slots) } else { pendingWrites.push(slot, slots) }
    }

    /// Completes `slot` (and everything linked after it) with ECANCELED without running it.
    @usableFromInline
    func cancel(_ slot: Int32) {
        var current = slot
        while current >= 0 {
            let next = slots[Int(current)].chainNext
            slots[Int(current)].chainNext = -1
            if slots[Int(current)].state == .held { heldCount -= 1 }
            slots[Int(current)].errno = ECANCELED
            slots[Int(current)].state = .completed
            completed.push(current, slots)
            current = next
        }
    }

    /// Moves pending requests into the kernel by the priority table.
    @inlinable
    func dispatch() {
        while inFlight < queueDepth {
            let read: Bool
            if !pendingReads.isEmpty && readsInFlight < readMin { read = true }
            else if !pendingWrites.isEmpty && writesInFlight < writeMin { read = false }
            else if !pendingReads.isEmpty && readsInFlight < readMax { read = true }
            else if !pendingWrites.isEmpty && writesInFlight < writeMax { read = false }
            else { return }
            let slot = read ? pendingReads.pop(slots) : pendingWrites.pop(slots)
            if read { readsInFlight += 1 } else { writesInFlight += 1 }
            slots[Int(slot)].state = .inFlight
            issue(slot)
        }
        assert(inFlight <= queueDepth)
    }

    /// Prepares the kernel request for the untransferred part of `slot`.
    @inlinable
    func issue(_ slot: Int32) {
        let request = slots[Int(slot)]
        precondition(request.done <= request.length, "bytes done past the request length")
        var length = request.length - request.done
        if faultsEnabled && request.operation.usesBuffer && length > shortTransferBytesMax {
            length = max(shortTransferBytesMax, Int(devices[Int(request.deviceIndex)].logicalBlockSize))
        }
        backend.prepare(slot: slot, operation: request.operation, deviceIndex: Int(request.deviceIndex),
                        address: request.address.map { $0 + request.done }, length: length,
                        offset: request.offset + UInt64(request.done), registeredIndex: request.registeredIndex)
        stats.kernelSubmissions &+= 1
    }

    // MARK: Completion

    public func submitQueued() throws(IOError) {
        dispatch()
        try enter(waitCount: 0)
    }

    @inlinable
    func enter(waitCount: Int) throws(IOError) {
        while true {
            if backend.preparedCount > 0 { stats.submitSyscalls &+= 1 }
            let rc = backend.enter(waitCount: waitCount)
            if rc == 0 { return }
            switch -rc {
            case EINTR:
                continue
            case EAGAIN, EBUSY:
                // The kernel is out of room for completions or requests: reap, then retry.
                stats.submitBusyRetries &+= 1
                if harvestAll() == 0 && inFlight > 0 {
                    _ = backend.waitForCompletion()
                    harvestAll()
                }
                if waitCount > 0 && completed.count > 0 { return }
            default:
                throw .system(path: devices.first?.path ?? "engine", operation: "\(Backend.kind.rawValue) submit", errno: -rc)
            }
        }
    }

    @inlinable @discardableResult
    func harvestAll() -> Int {
        var total = 0
        while true {
            let count = backend.harvest { slot, result in self.handle(slot: slot, result: result) }
            total += count
            if count == 0 { return total }
        }
    }

    @inlinable
    func handle(slot: Int32, result kernelResult: Int32) {
        precondition(slot >= 0 && Int(slot) < slotCount && slots[Int(slot)].state == .inFlight,
                     "completion for slot \(slot) that is not in flight")
        var result = kernelResult
        if faultsEnabled { result = injectFault(slot: slot, result: result) }
        let operation = slots[Int(slot)].operation
        if result == -EINTR || result == -EAGAIN {
            stats.retriesAfterEINTRorEAGAIN &+= 1
            issue(slot)
            return
        }
        if result < 0 { finish(slot, errno: -result); return }
        if !operation.usesBuffer { finish(slot, errno: 0); return }
        if result == 0 { finish(slot, errno: EIO); return }   // no progress: end of device or a lying driver
        slots[Int(slot)].done += Int(result)
        let done = slots[Int(slot)].done
        let length = slots[Int(slot)].length
        precondition(done <= length, "kernel reported \(done) bytes for a \(length)-byte request")
        if done < length {
            stats.shortTransfersResubmitted &+= 1
            issue(slot)
            return
        }
        finish(slot, errno: 0)
    }

    @usableFromInline
    func injectFault(slot: Int32, result: Int32) -> Int32 {
        guard let faults = configuration.faults, result >= 0 else { return result }
        let request = slots[Int(slot)]
        if request.operation.usesBuffer, let every = faults.eagainEvery, every > 0 {
            faultCounter &+= 1
            if faultCounter % UInt64(every) == 0 { return -EAGAIN }
        }
        let end = request.offset + UInt64(request.length)
        for failing in faults.failingRanges where failing.deviceIndex == Int(request.deviceIndex) {
            if let op = failing.operation, op != request.operation { continue }
            if request.operation == .flush || (request.offset < failing.range.upperBound && failing.range.lowerBound < end) {
                return -failing.errno
            }
        }
        return result
    }

    @inlinable
    func finish(_ slot: Int32, errno: Int32) {
        if slots[Int(slot)].operation.isReadClass { readsInFlight -= 1 } else { writesInFlight -= 1 }
        precondition(readsInFlight >= 0 && writesInFlight >= 0, "in-flight counters went negative")
        slots[Int(slot)].errno = errno
        slots[Int(slot)].state = .completed
        completed.push(slot, slots)
        stats.completed &+= 1
        let successor = slots[Int(slot)].chainNext
        if successor >= 0 {
            slots[Int(slot)].chainNext = -1
            precondition(slots[Int(successor)].state == .held, "linked successor must be held")
            if errno == 0 {
                heldCount -= 1
                enqueuePending(successor)
            } else {
                cancel(successor)
            }
        }
    }

    /// Hands completed slots to `body` and frees them.
    @inlinable
    func deliver(_ body: (IOCompletion, consuming IOBuffer?) -> Void) -> Int {
        var count = 0
        while !completed.isEmpty {
            let slot = completed.pop(slots)
            let request = slots[Int(slot)]
            if slot == linkTail {
                linkTail = -1
                linkPredecessorErrno = request.errno
            }
            let buffer = (buffers + Int(slot)).move()
            (buffers + Int(slot)).initialize(to: nil)
            slots[Int(slot)].state = .free   // the rest is rewritten whole at the next submit
            freeList.push(slot, slots)
            count += 1
            body(IOCompletion(tag: request.tag, operation: request.operation, deviceIndex: Int(request.deviceIndex),
                              offset: request.offset, length: request.length, errno: request.errno), buffer)
        }
        return count
    }

    @inlinable @discardableResult
    public func reap(minimum: Int, _ body: (IOCompletion, consuming IOBuffer?) -> Void) throws(IOError) -> Int {
        var delivered = deliver(body)
        while delivered < minimum {
            dispatch()
            let inKernel = inFlight
            if inKernel == 0 {
                // Nothing can complete: everything outstanding was delivered.
                assert(pendingReads.isEmpty && pendingWrites.isEmpty && heldCount == 0)
                break
            }
            try enter(waitCount: min(minimum - delivered, inKernel))
            harvestAll()
            delivered += deliver(body)
        }
        // Keep the kernel busy while the caller works on what it got.
        dispatch()
        if backend.preparedCount > 0 { try enter(waitCount: 0) }
        return delivered
    }
}
