// ThreadSetup — naming an engine thread and setting its priority (C glue: pthread_setname_np
// and SYS_gettid are not visible to Swift's Glibc module).

import CShims

public enum ThreadSetup {
    /// Names the calling thread (15 bytes at most are kept) and, when `nice` is not 0, sets its
    /// nice value. Returns 0 or the errno of the refused priority change.
    public static func prepare(name: String, nice: Int32) -> Int32 {
        name.withCString { CShims_thread_prepare($0, nice) }
    }
}
