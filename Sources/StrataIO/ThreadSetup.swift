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
        let context = Unmanaged.passRetained(Body(body)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { context in
            Unmanaged<Body>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, context)
        precondition(result == 0, "pthread_create for \(what) failed: \(result)")
        return thread
    }

    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }
}
