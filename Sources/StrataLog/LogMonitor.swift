// LogMonitor — the log's mutex and its three condition variables (pthread), one per kind of
// wait, so that each wakeup reaches only threads that can proceed.
//
// `Synchronization.Mutex` has no condition variable, and the log's waits are condition waits
// with a bound. Each kind of waiter has its own condition:
//   - `.writer`: the writer (the dedicated thread, or the leading caller) — idle with nothing to
//     write, or waiting for a checkpoint to release segments. One waiter: `signal` suffices.
//   - `.room`: appenders waiting for room in a batch buffer (woken when the buffers swap).
//   - `.durable`: `sync()` waiters that found every per-waiter slot taken (LogWaiters.swift);
//     the usual `sync()` waiter parks on its own slot instead and wakes only when its LSN is
//     durable.
// The conditions use CLOCK_MONOTONIC so a bounded wait is immune to clock changes. The state
// they protect lives in their owner (IntentLog) and is touched only between `lock()` and
// `unlock()`; that discipline is what the owner's `@unchecked Sendable` rests on.

#if canImport(Glibc)
import Glibc
#endif

final class LogMonitor: @unchecked Sendable {
    enum Condition: Int, CaseIterable {
        case writer, room, durable
    }

    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let conditions: UnsafeMutablePointer<pthread_cond_t>

    init() {
        mutex = .allocate(capacity: 1)
        conditions = .allocate(capacity: Condition.allCases.count)
        precondition(pthread_mutex_init(mutex, nil) == 0, "pthread_mutex_init")
        for index in 0..<Condition.allCases.count { LogMonitor.initMonotonicCondition(conditions + index) }
    }

    deinit {
        for index in 0..<Condition.allCases.count { pthread_cond_destroy(conditions + index) }
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        conditions.deallocate()
    }

    @inline(__always) func lock() { pthread_mutex_lock(mutex) }
    @inline(__always) func unlock() { pthread_mutex_unlock(mutex) }
    func broadcast(_ condition: Condition) { pthread_cond_broadcast(conditions + condition.rawValue) }
    func signal(_ condition: Condition) { pthread_cond_signal(conditions + condition.rawValue) }

    /// Waits (lock held) until signalled.
    func wait(_ condition: Condition) { pthread_cond_wait(conditions + condition.rawValue, mutex) }

    /// Waits (lock held) until signalled or `deadlineNs` (monotonic) passes; false on timeout.
    func wait(_ condition: Condition, untilNs deadlineNs: UInt64) -> Bool {
        LogMonitor.timedWait(conditions + condition.rawValue, mutex, untilNs: deadlineNs)
    }

    static func initMonotonicCondition(_ condition: UnsafeMutablePointer<pthread_cond_t>) {
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        precondition(pthread_cond_init(condition, &attributes) == 0, "pthread_cond_init")
        pthread_condattr_destroy(&attributes)
    }

    /// `pthread_cond_timedwait` on a monotonic condition; false on timeout.
    static func timedWait(_ condition: UnsafeMutablePointer<pthread_cond_t>, _ mutex: UnsafeMutablePointer<pthread_mutex_t>,
                          untilNs deadlineNs: UInt64) -> Bool {
        var deadline = timespec(tv_sec: Int(deadlineNs / 1_000_000_000), tv_nsec: Int(deadlineNs % 1_000_000_000))
        return pthread_cond_timedwait(condition, mutex, &deadline) != ETIMEDOUT
    }

    static func nowNs() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}
