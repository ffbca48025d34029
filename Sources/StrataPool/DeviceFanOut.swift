// DeviceFanOut — run one blocking job per device at the same time (one thread each).
//
// Commits and imports touch every device of the pool with blocking calls whose cost is latency,
// not CPU: a flush (fdatasync) is a journal commit or a device cache flush, a label read is one
// round trip. Done device after device, a 5-device commit waits for 10 such latencies; done side
// by side it waits for about 2. The job count is the pool's device count (at most 64), and this
// runs on the control plane only (commit, import), never per I/O, so a thread per job is fine.
// With one job, it runs on the calling thread.
//
// Crash-testing hook: `Pool.runsDeviceJobsInOrder` (SPI `CrashTesting`) runs the jobs one after
// another in index order on the calling thread. The writes and flushes are the same; only their
// interleaving across devices is fixed, so a recording of a multi-device commit has the same event
// order on every run and a printed crash image (seed, step, image index) replays. Off by default.

#if canImport(Glibc)
import Glibc
#endif
import StrataIO
import Synchronization

/// A job handed to a thread (its closure captures only Sendable values).
private final class FanOutJob: @unchecked Sendable {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

enum DeviceFanOut {
    static let inIndexOrder = Atomic<Bool>(false)

    /// Runs `job(index)` for every index in `0..<count`, concurrently, and waits for all. Returns
    /// the results in index order; a job's error is returned in its slot, not thrown.
    static func run<T: Sendable, E: Error>(count: Int, _ job: @escaping @Sendable (Int) throws(E) -> T) -> [Result<T, E>] {
        precondition(count >= 0 && count <= PoolConfiguration.deviceCountMax, "fan-out of \(count) jobs")
        if count == 1 || inIndexOrder.load(ordering: .relaxed) {
            return (0..<count).map { index in
                do throws(E) { return .success(try job(index)) } catch { return .failure(error) }
            }
        }
        let results = Mutex<[Result<T, E>?]>(Array(repeating: nil, count: count))
        var threads: [pthread_t] = []
        for index in 0..<count {
            let context = FanOutJob {
                let result: Result<T, E>
                do throws(E) { result = .success(try job(index)) } catch { result = .failure(error) }
                results.withLock { $0[index] = result }
            }
            if let thread = ThreadSetup.tryStart(context.body).thread {
                threads.append(thread)
            } else {
                context.body()                          // no thread: run it here instead
            }
        }
        for thread in threads { pthread_join(thread, nil) }
        return results.withLock { slots in slots.map { $0! } }
    }
}

extension Pool {
    /// Crash-testing hook: when true, the per-device jobs of commits and imports run one after
    /// another in device order on the calling thread instead of side by side, so that recordings
    /// of multi-device commits are deterministic (see DeviceFanOut). Process-wide; off by default.
    @_spi(CrashTesting) public static var runsDeviceJobsInOrder: Bool {
        get { DeviceFanOut.inIndexOrder.load(ordering: .relaxed) }
        set { DeviceFanOut.inIndexOrder.store(newValue, ordering: .relaxed) }
    }
}
