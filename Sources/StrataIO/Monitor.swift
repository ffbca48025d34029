// Monitor — one pthread mutex and one or more condition variables, for locks held across calls and
// bounded waits (the intent log's writer and waiters, the object store's gate and stripes).
//
// `Synchronization.Mutex` has no condition variable and can only be held inside a closure; a
// transaction holds its object locks from `start` to `stop`, and the log's waits (room in a
// batch, a batch becoming durable) are condition waits with a deadline. The condition uses
// CLOCK_MONOTONIC so a bounded wait is immune to clock changes. The state a monitor protects
// lives in its owner and is touched only between `lock()` and `unlock()`; that discipline is
// what the owners' `@unchecked Sendable` rests on. The mutex and condition live in memory
// allocated here (pthread objects must not move).

#if canImport(Glibc)
import Glibc
#endif

public final class Monitor: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let conditions: UnsafeMutablePointer<pthread_cond_t>
    /// Number of condition variables (each kind of waiter can have its own, so that a wakeup
    /// reaches only threads that can proceed; the intent log uses three).
    public let conditionCount: Int

    public init(conditions conditionCount: Int = 1) {
        precondition(conditionCount >= 1, "a monitor needs at least one condition")
        self.conditionCount = conditionCount
        mutex = .allocate(capacity: 1)
        conditions = .allocate(capacity: conditionCount)
        let mutexResult = pthread_mutex_init(mutex, nil)
        precondition(mutexResult == 0, "pthread_mutex_init: \(mutexResult)")
        for index in 0..<conditionCount { Monitor.initMonotonicCondition(conditions + index) }
    }

    deinit {
        for index in 0..<conditionCount { pthread_cond_destroy(conditions + index) }
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        conditions.deallocate()
    }

    @inline(__always) public func lock() { pthread_mutex_lock(mutex) }
    @inline(__always) public func unlock() { pthread_mutex_unlock(mutex) }
    public func broadcast(_ condition: Int = 0) {
        assert(condition >= 0 && condition < conditionCount)
        pthread_cond_broadcast(conditions + condition)
    }
    public func signal(_ condition: Int = 0) {
        assert(condition >= 0 && condition < conditionCount)
        pthread_cond_signal(conditions + condition)
    }

    /// Waits (lock held) until `condition` is signalled.
    public func wait(_ condition: Int = 0) {
        assert(condition >= 0 && condition < conditionCount)
        pthread_cond_wait(conditions + condition, mutex)
    }

    /// Waits (lock held) until signalled or `deadlineNs` (monotonic) passes; false on timeout.
    public func wait(_ condition: Int = 0, untilNs deadlineNs: UInt64) -> Bool {
        assert(condition >= 0 && condition < conditionCount)
        return Monitor.timedWait(conditions + condition, mutex, untilNs: deadlineNs)
    }

    /// Runs `body` with the lock held.
    @inline(__always) public func withLock<Result>(_ body: () throws -> Result) rethrows -> Result {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Initializes a condition variable on CLOCK_MONOTONIC (for callers that keep their own
    /// arrays of conditions, such as the intent log's per-waiter slots).
    public static func initMonotonicCondition(_ condition: UnsafeMutablePointer<pthread_cond_t>) {
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        let result = pthread_cond_init(condition, &attributes)
        precondition(result == 0, "pthread_cond_init: \(result)")
        pthread_condattr_destroy(&attributes)
    }

    /// `pthread_cond_timedwait` on a monotonic condition (`mutex` held); false on timeout.
    public static func timedWait(_ condition: UnsafeMutablePointer<pthread_cond_t>,
                                 _ mutex: UnsafeMutablePointer<pthread_mutex_t>, untilNs deadlineNs: UInt64) -> Bool {
        var deadline = timespec(tv_sec: Int(deadlineNs / 1_000_000_000), tv_nsec: Int(deadlineNs % 1_000_000_000))
        return pthread_cond_timedwait(condition, mutex, &deadline) != ETIMEDOUT
    }

    /// CLOCK_MONOTONIC in nanoseconds (the clock of `wait(untilNs:)`).
    public static func nowNs() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}
