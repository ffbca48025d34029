// The intent log's three wait conditions on its `Monitor` (StrataIO), one per kind of waiter, so
// that each wakeup reaches only threads that can proceed:
//   - `.writer`: the writer (the dedicated thread, or the leading caller) — idle with nothing to
//     write, or waiting for a checkpoint to release segments. One waiter: `signal` suffices.
//   - `.room`: appenders waiting for room in a batch buffer (woken when the buffers swap).
//   - `.durable`: `sync()` waiters that found every per-waiter slot taken (LogWaiters.swift);
//     the usual `sync()` waiter parks on its own slot instead and wakes only when its LSN is
//     durable.
//   - `.completer`: the completer thread (dedicated-writer mode), waiting for a written batch
//     whose callbacks it runs (IntentLog+Writer.swift).

import StrataIO

enum LogCondition: Int, CaseIterable {
    case writer, room, durable, completer
}

extension Monitor {
    /// A monitor with one condition per `LogCondition`.
    static func forLog() -> Monitor { Monitor(conditions: LogCondition.allCases.count) }

    @inline(__always) func signal(_ condition: LogCondition) { signal(condition.rawValue) }
    @inline(__always) func broadcast(_ condition: LogCondition) { broadcast(condition.rawValue) }
    @inline(__always) func wait(_ condition: LogCondition) { wait(condition.rawValue) }
    @inline(__always) func wait(_ condition: LogCondition, untilNs deadlineNs: UInt64) -> Bool {
        wait(condition.rawValue, untilNs: deadlineNs)
    }
}
