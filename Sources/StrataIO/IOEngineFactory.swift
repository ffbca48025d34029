// IOEngineFactory — picks the engine: io_uring unless it is unavailable, then libaio.
//
// "Unavailable" is decided once per process: /proc/sys/kernel/io_uring_disabled == 2, or
// io_uring_setup failing with ENOSYS/EPERM (seccomp, sysctl). The fallback is announced with
// one log line. An explicit choice (argument, or STRATA_IO_ENGINE=io_uring|libaio in the
// environment for `.automatic`) overrides the probe.

#if canImport(Glibc)
import Glibc
#endif
import Synchronization

public enum IOEngineFactory {
    private static let fallbackLogged = Atomic<Bool>(false)

    public static func makeEngine(devices: [BlockDevice], choice: IOEngineChoice = .automatic,
                                  configuration: IOEngineConfiguration = IOEngineConfiguration()) throws(IOError) -> any IOEngine {
        var choice = choice
        if choice == .automatic, let raw = getenv("STRATA_IO_ENGINE") {
            let value = String(cString: raw)
            guard let parsed = IOEngineChoice(rawValue: value) else {
                throw .invalidConfiguration(name: "STRATA_IO_ENGINE", value: value, reason: "expected automatic, io_uring or libaio")
            }
            choice = parsed
        }
        switch choice {
        case .ioUring:
            return try URingEngine(devices: devices, configuration: configuration)
        case .libaio:
            return try AIOEngine(devices: devices, configuration: configuration)
        case .automatic:
            if let reason = ioUringDisabledReason() {
                logFallback(reason)
                return try AIOEngine(devices: devices, configuration: configuration)
            }
            do {
                return try URingEngine(devices: devices, configuration: configuration)
            } catch .engineUnavailable(_, let reason) {
                logFallback(reason)
                return try AIOEngine(devices: devices, configuration: configuration)
            }
        }
    }

    /// Why io_uring cannot be used here, from the sysctl alone (nil: try it).
    public static func ioUringDisabledReason() -> String? {
        ioUringDisabledReason(sysctl: readSmallFile("/proc/sys/kernel/io_uring_disabled"), privileged: geteuid() == 0)
    }

    /// The decision itself: 0 (or no such sysctl, before 6.6) = on; 1 = only privileged
    /// processes; 2 = off for everyone.
    public static func ioUringDisabledReason(sysctl: String?, privileged: Bool) -> String? {
        guard let text = sysctl else { return nil }
        switch Substring(text).trimmingSpaces {
        case "2": return "kernel.io_uring_disabled=2"
        case "1" where !privileged: return "kernel.io_uring_disabled=1 and not privileged"
        default: return nil
        }
    }

    private static func logFallback(_ reason: String) {
        if !fallbackLogged.exchange(true, ordering: .relaxed) {
            Diagnostics.log("io_uring unavailable (\(reason)); using the libaio engine")
        }
    }
}
