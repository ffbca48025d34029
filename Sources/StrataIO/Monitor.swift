// Monitor — one pthread mutex and one condition variable, for locks held across calls and
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
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        mutex = .allocate(capacity: 1)
        condition = .allocate(capacity: 1)
        let mutexResult = pthread_mutex_init(mutex, nil)
        precondition(mutexResult == 0, "pthread_mutex_init: \(mutexResult)")
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        let conditionResult = pthread_cond_init(condition, &attributes)
        precondition(conditionResult == 0, "pthread_cond_init: \(conditionResult)")
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    @inline(__always) public func lock() { pthread_mutex_lock(mutex) }
    @inline(__always) public func unlock() { pthread_mutex_unlock(mutex) }
    public func broadcast() { pthread_cond_broadcast(condition) }
    public func signal() { pthread_cond_signal(condition) }

    /// Waits (lock held) until signalled.
    public func wait() { pthread_cond_wait(condition, mutex) }

    /// Waits (lock held) until signalled or `deadlineNs` (monotonic) passes; false on timeout.
    public func wait(untilNs deadlineNs: UInt64) -> Bool {
        var deadline = timespec(tv_sec: Int(deadlineNs / 1_000_000_000), tv_nsec: Int(deadlineNs % 1_000_000_000))
        return pthread_cond_timedwait(condition, mutex, &deadline) != ETIMEDOUT
    }

    /// Runs `body` with the lock held.
    @inline(__always) public func withLock<Result>(_ body: () throws -> Result) rethrows -> Result {
        lock()
        defer { unlock() }
        return try body()
    }

    /// CLOCK_MONOTONIC in nanoseconds (the clock of `wait(untilNs:)`).
    public static func nowNs() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}
