// ThreadSetup — naming an engine thread and setting its priority (C glue: pthread_setname_np
// and SYS_gettid are not visible to Swift's Glibc module).

import CShims
#if canImport(Glibc)
import Glibc
#endif

public enum ThreadSetup {
    /// Names the calling thread (15 bytes at most are kept) and, when `nice` is not 0, sets its
    /// nice value. Returns 0 or the errno of the refused priority change.
    public static func prepare(name: String, nice: Int32) -> Int32 {
        name.withCString { CShims_thread_prepare($0, nice) }
    }

    /// Starts a detached-lifetime thread running `body` (which keeps what it captures alive
    /// until it returns); traps when the system refuses a thread. Returns it for a later join.
    public static func start(_ what: String, _ body: @escaping () -> Void) -> pthread_t {
        let started = tryStart(body)
        precondition(started.thread != nil, "pthread_create for \(what) failed: \(started.error)")
        return started.thread!
    }

    /// Starts a thread running `body`, or returns nil and the error when the system refuses
    /// one (`body` then never runs: the caller does the work itself).
    public static func tryStart(_ body: @escaping () -> Void) -> (thread: pthread_t?, error: Int32) {
        let context = Unmanaged.passRetained(Body(body)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { context in
            Unmanaged<Body>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, context)
        guard result == 0 else {
            Unmanaged<Body>.fromOpaque(context).release()
            return (nil, result)
        }
        return (thread, 0)
    }

    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }
}
