// ThreadSetup — naming an engine thread, setting its priority and the CPUs it may run on (C
// glue: pthread_setname_np, SYS_gettid and the CPU_SET macros are not visible to Swift's Glibc
// module).

import CShims
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

public enum ThreadSetup {
    /// Prepares an engine thread, from its first line: names it (15 bytes at most are kept, for
    /// top and perf), sets its nice value when not 0, and pins it to `cpus` when not empty. A
    /// refused priority or pinning leaves the thread as it was and logs one line per process
    /// (per kind, not per thread or per store opened), naming the setting to change.
    public static func prepare(name: String, nice: Int32 = 0, niceSetting: String = "", cpus: [Int] = [], cpusSetting: String = "") {
        let refused = name.withCString { CShims_thread_prepare($0, nice) }
        if refused != 0 && !refusedNiceReported.exchange(true, ordering: .relaxed) {
            Diagnostics.log("strata: \(name) keeps the default priority (setpriority to nice \(nice) refused, errno \(refused)): give the process CAP_SYS_NICE, or set \(niceSetting) to 0")
        }
        pinOrReport(name, to: cpus, setting: cpusSetting)
    }

    private static let refusedNiceReported = Atomic<Bool>(false)

    /// Restricts the calling thread to `cpus` (empty: leaves it as it is). Returns 0 or the errno
    /// of the refused change (EINVAL when none of them is online and allowed to this process).
    public static func pin(to cpus: [Int]) -> Int32 {
        guard !cpus.isEmpty else { return 0 }
        guard cpus.allSatisfy({ $0 >= 0 && $0 < cpuNumberLimit }) else { return EINVAL }
        let numbers = cpus.map { Int32($0) }
        return numbers.withUnsafeBufferPointer { CShims_thread_pin($0.baseAddress, Int32($0.count)) }
    }

    /// Pins the calling thread (`name`) to `cpus` as `pin(to:)` does; a refusal leaves it where it
    /// was and logs one line per process naming the setting (`setting`) to change.
    public static func pinOrReport(_ name: String, to cpus: [Int], setting: String) {
        let error = pin(to: cpus)
        guard error != 0 else { return }
        if !refusedPinReported.exchange(true, ordering: .relaxed) {
            Diagnostics.log("strata: \(name) runs on any CPU (pinning to CPUs \(cpus) refused, errno \(error)): check \(setting) against the CPUs this process may use (\(allowedCPUs()))")
        }
    }

    private static let refusedPinReported = Atomic<Bool>(false)

    /// The CPUs the calling thread may run on, ascending (empty if the system will not say).
    public static func allowedCPUs() -> [Int] {
        var numbers = [Int32](repeating: 0, count: cpuNumberLimit)
        let count = numbers.withUnsafeMutableBufferPointer { CShims_thread_allowed_cpus($0.baseAddress, Int32($0.count)) }
        return count > 0 ? numbers[0..<Int(count)].map { Int($0) } : []
    }

    /// CPU numbers are below this (the kernel interface's CPU_SETSIZE, 1024).
    public static let cpuNumberLimit = Int(CShims_cpu_set_size())

    /// What is wrong with a setting that lists CPUs (`name`): each in 0..<cpuNumberLimit, no repeats.
    public static func cpuListProblems(_ cpus: [Int], _ name: String) -> [String] {
        var problems: [String] = []
        if let bad = cpus.first(where: { $0 < 0 || $0 >= cpuNumberLimit }) {
            problems.append("\(name) names CPU \(bad), outside 0..<\(cpuNumberLimit)")
        }
        if Set(cpus).count != cpus.count { problems.append("\(name) \(cpus) names a CPU twice") }
        return problems
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
