// LogWaiters — per-waiter wakeups for `sync()`: a fixed table of slots, each with its own
// parker (mutex, monotonic condition, posted outcome), so that a batch becoming durable wakes
// exactly the threads whose LSN it covers.
//
// Why. With one condition variable broadcast per batch, every `sync()` waiter wakes on every
// batch, contends for the log's mutex, and most go back to sleep: on a fast device with 16
// threads on 2 cores that herd was the group commit's ceiling (docs/intent-log.md, Performance).
//
// Protocol. A waiter claims a free slot (lock-free: `freeMask`), then under the log's monitor
// arms it with the LSN it waits for (`targetLSN`, `armedMask`), releases the monitor, and parks
// on its slot. Whoever moves `lastDurableLSN` (the writer, under the monitor) takes the armed
// slots whose LSN is now durable (`takeDurable`: disarms them) and, just after releasing the
// monitor, posts each one `.durable`; failure and close post every armed slot `.recheck`; in
// `callerLeads` mode the caller that finishes leading posts one not-yet-durable slot `.recheck`
// so that it leads the next batch. A posted `.durable` waiter returns without touching the
// log's monitor again. Every post follows a disarm done under the monitor, so a slot is posted
// at most once per arming; a waiter whose bounded park timed out takes the monitor and disarms
// its slot — if it was no longer armed, a post is on its way (or done) and it consumes it
// before releasing the slot, so a free slot never holds a stale post. When all `slotCountMax`
// slots are taken, `sync()` falls back to the monitor's `.durable` condition (broadcast per
// batch while anyone waits there).
//
// Nothing is allocated after init: slots, parkers and masks are preallocated.

import StrataIO
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

final class LogWaiters: @unchecked Sendable {
    /// Slots in the table: one bit each of a `UInt64` mask. More concurrent `sync()` callers
    /// than this wait on the shared `.durable` condition instead (correct, less efficient).
    static let slotCountMax = 64

    /// Why a parked waiter was woken.
    enum Outcome: UInt8 {
        /// Not posted (the slot's resting state).
        case none = 0
        /// Its LSN is durable and every earlier callback has run: return.
        case durable = 1
        /// Look again under the monitor: the log failed or closed, or (in `callerLeads` mode)
        /// this waiter should lead the next batch.
        case recheck = 2
    }

    private let parkMutexes: UnsafeMutablePointer<pthread_mutex_t>
    private let parkConditions: UnsafeMutablePointer<pthread_cond_t>
    /// Posted outcome of each slot (guarded by the slot's park mutex).
    private let posted: UnsafeMutablePointer<Outcome>
    /// LSN each armed slot waits for (guarded by the log's monitor).
    private let targetLSN: UnsafeMutablePointer<LSN>
    /// Slots armed and not yet posted (guarded by the log's monitor).
    private(set) var armedMask: UInt64 = 0
    /// Slots nobody holds (claimed and released without the monitor).
    private let freeMask = Atomic<UInt64>(~0)

    init() {
        let count = LogWaiters.slotCountMax
        parkMutexes = .allocate(capacity: count)
        parkConditions = .allocate(capacity: count)
        posted = .allocate(capacity: count)
        posted.initialize(repeating: .none, count: count)
        targetLSN = .allocate(capacity: count)
        targetLSN.initialize(repeating: 0, count: count)
        for slot in 0..<count {
            let initialized = pthread_mutex_init(parkMutexes + slot, nil)
            precondition(initialized == 0, "pthread_mutex_init: \(initialized)")
            Monitor.initMonotonicCondition(parkConditions + slot)
        }
    }

    deinit {
        for slot in 0..<LogWaiters.slotCountMax {
            pthread_cond_destroy(parkConditions + slot)
            pthread_mutex_destroy(parkMutexes + slot)
        }
        parkMutexes.deallocate()
        parkConditions.deallocate()
        posted.deallocate()
        targetLSN.deallocate()
    }

    // MARK: Slot ownership (any thread)

    /// Claims a free slot, or nil when all are held.
    func claim() -> Int? {
        var free = freeMask.load(ordering: .relaxed)
        while free != 0 {
            let bit = free & (0 &- free)
            let (exchanged, original) = freeMask.compareExchange(expected: free, desired: free & ~bit, ordering: .acquiring)
            if exchanged { return bit.trailingZeroBitCount }
            free = original
        }
        return nil
    }

    /// Releases a slot claimed by `claim` (disarmed, its post consumed).
    func release(_ slot: Int) {
        let bit = UInt64(1) << UInt64(slot)
        let before = freeMask.bitwiseOr(bit, ordering: .releasing).oldValue
        precondition(before & bit == 0, "log waiter slot \(slot) released twice")
    }

    // MARK: Arming and taking (under the log's monitor)

    func arm(_ slot: Int, through lsn: LSN) {
        let bit = UInt64(1) << UInt64(slot)
        precondition(armedMask & bit == 0, "log waiter slot \(slot) armed twice")
        targetLSN[slot] = lsn
        armedMask |= bit
    }

    /// Disarms `slot`; true when it was armed (so no post is coming), false when a post was
    /// taken for it (it is coming, or came).
    func disarm(_ slot: Int) -> Bool {
        let bit = UInt64(1) << UInt64(slot)
        defer { armedMask &= ~bit }
        return armedMask & bit != 0
    }

    /// Disarms and returns the armed slots waiting for an LSN ≤ `durableLSN`.
    func takeDurable(through durableLSN: LSN) -> UInt64 {
        var taken: UInt64 = 0
        var mask = armedMask
        while mask != 0 {
            let slot = mask.trailingZeroBitCount
            mask &= mask - 1
            if targetLSN[slot] <= durableLSN { taken |= UInt64(1) << UInt64(slot) }
        }
        armedMask &= ~taken
        return taken
    }

    /// Disarms and returns the armed slot waiting for the lowest LSN, if any.
    func takeLowest() -> UInt64 {
        var lowest: Int? = nil
        var mask = armedMask
        while mask != 0 {
            let slot = mask.trailingZeroBitCount
            mask &= mask - 1
            if lowest == nil || targetLSN[slot] < targetLSN[lowest!] { lowest = slot }
        }
        guard let lowest else { return 0 }
        let bit = UInt64(1) << UInt64(lowest)
        armedMask &= ~bit
        return bit
    }

    /// Disarms and returns every armed slot.
    func takeAll() -> UInt64 {
        defer { armedMask = 0 }
        return armedMask
    }

    // MARK: Parking (any thread)

    /// Posts `outcome` to every slot of `mask` (each taken from the armed set by the caller).
    func post(_ mask: UInt64, _ outcome: Outcome) {
        precondition(outcome != .none, "posting nothing")
        var mask = mask
        while mask != 0 {
            let slot = mask.trailingZeroBitCount
            mask &= mask - 1
            pthread_mutex_lock(parkMutexes + slot)
            precondition(posted[slot] == .none, "log waiter slot \(slot) posted twice")
            posted[slot] = outcome
            pthread_cond_signal(parkConditions + slot)
            pthread_mutex_unlock(parkMutexes + slot)
        }
    }

    /// Parks until `slot` is posted (then consumes the post and returns its outcome) or, with a
    /// deadline, until `deadlineNs` (monotonic) passes (then `.none`).
    func park(_ slot: Int, untilNs deadlineNs: UInt64?) -> Outcome {
        pthread_mutex_lock(parkMutexes + slot)
        defer { pthread_mutex_unlock(parkMutexes + slot) }
        while posted[slot] == .none {
            if let deadlineNs {
                if !Monitor.timedWait(parkConditions + slot, parkMutexes + slot, untilNs: deadlineNs) { break }
            } else {
                pthread_cond_wait(parkConditions + slot, parkMutexes + slot)
            }
        }
        let outcome = posted[slot]
        posted[slot] = .none
        return outcome
    }
}
