// One-line operational messages (engine fallback, registration fallback). Strata is a library,
// so the sink is replaceable; the default writes one line to standard error.

#if canImport(Glibc)
import Glibc
#endif
import Synchronization

public enum Diagnostics {
    public typealias Sink = @Sendable (String) -> Void

    private static let sinkStorage = Mutex<Sink>({ line in
        var text = "strata: " + line + "\n"
        text.withUTF8 { bytes in _ = write(2, bytes.baseAddress, bytes.count) }
    })

    /// Replaces where diagnostics go (a server's logger, a test's collector).
    public static func setSink(_ sink: @escaping Sink) { sinkStorage.withLock { $0 = sink } }

    public static func log(_ line: String) {
        let sink = sinkStorage.withLock { $0 }
        sink(line)
    }
}
