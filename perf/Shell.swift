// Running external tools (fio, losetup, apt-get) and cleaning up on exit or interrupt.

import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
    var succeeded: Bool { status == 0 }
}

/// Things to undo at the end of the run (detach a loop device, remove a temp dir, reset zram),
/// run in reverse order of registration, also when the run is interrupted by SIGINT/SIGTERM.
final class Cleanup: Sendable {
    static let shared = Cleanup()

    private struct State {
        var actions: [(label: String, action: @Sendable () -> Void)] = []
        var childPID: pid_t = 0
        var ran = false
    }
    private let state = Mutex(State())

    func add(_ label: String, _ action: @escaping @Sendable () -> Void) {
        state.withLock { $0.actions.append((label, action)) }
    }

    func setChild(_ pid: pid_t) { state.withLock { $0.childPID = pid } }

    /// Runs every registered action once (later calls do nothing).
    func runAll() {
        let actions: [(label: String, action: @Sendable () -> Void)] = state.withLock { s in
            if s.ran { return [] }
            s.ran = true
            let list = s.actions
            s.actions = []
            return list
        }
        for entry in actions.reversed() { entry.action() }
    }

    /// On SIGINT/SIGTERM: stop the running tool, undo what was set up, exit 130/143.
    func installSignalHandlers() {
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { [self] in
                let child = state.withLock { $0.childPID }
                if child > 0 { kill(child, SIGTERM) }
                FileHandle.standardError.write(Data("\nstrata-perf: interrupted, cleaning up\n".utf8))
                runAll()
                exit(128 + sig)
            }
            source.resume()
            Cleanup.sources.append(source)
        }
    }

    /// Keeps the signal sources alive; touched only by `installSignalHandlers` on the main thread.
    nonisolated(unsafe) private static var sources: [DispatchSourceSignal] = []
}

/// Runs `executable` (searched in PATH) with `arguments`, capturing its output via files in
/// `scratch` (fio's JSON can exceed a pipe's buffer).
func runCommand(_ executable: String, _ arguments: [String], scratch: String, echo: Bool = false) throws -> CommandResult {
    guard let path = findExecutable(executable) else {
        throw PerfError.tool("\(executable): not found in PATH")
    }
    if echo { progress("+ \(([executable] + arguments).joined(separator: " "))") }
    let outPath = scratch + "/cmd.stdout"
    let errPath = scratch + "/cmd.stderr"
    guard FileManager.default.createFile(atPath: outPath, contents: nil),
          FileManager.default.createFile(atPath: errPath, contents: nil),
          let outHandle = FileHandle(forWritingAtPath: outPath), let errHandle = FileHandle(forWritingAtPath: errPath) else {
        throw PerfError.tool("cannot create output files in \(scratch)")
    }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    process.standardOutput = outHandle
    process.standardError = errHandle
    process.standardInput = FileHandle.nullDevice
    do { try process.run() } catch { throw PerfError.tool("cannot start \(path): \(error)") }
    Cleanup.shared.setChild(process.processIdentifier)
    process.waitUntilExit()
    Cleanup.shared.setChild(0)
    try? outHandle.close()
    try? errHandle.close()
    let out = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
    let err = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
    return CommandResult(status: process.terminationStatus, stdout: out, stderr: err)
}

/// Runs a command with its output going to our stderr (for apt-get).
func runCommandPassthrough(_ executable: String, _ arguments: [String]) throws -> Int32 {
    guard let path = findExecutable(executable) else { throw PerfError.tool("\(executable): not found in PATH") }
    progress("+ \(([executable] + arguments).joined(separator: " "))")
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    process.standardOutput = FileHandle.standardError
    process.standardError = FileHandle.standardError
    process.standardInput = FileHandle.nullDevice
    var environment = ProcessInfo.processInfo.environment
    environment["DEBIAN_FRONTEND"] = "noninteractive"
    process.environment = environment
    do { try process.run() } catch { throw PerfError.tool("cannot start \(path): \(error)") }
    Cleanup.shared.setChild(process.processIdentifier)
    process.waitUntilExit()
    Cleanup.shared.setChild(0)
    return process.terminationStatus
}

func findExecutable(_ name: String) -> String? {
    if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    var dirs = path.split(separator: ":").map(String.init)
    for extra in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] where !dirs.contains(extra) { dirs.append(extra) }
    for dir in dirs {
        let candidate = dir + "/" + name
        if access(candidate, X_OK) == 0 { return candidate }
    }
    return nil
}

/// One line of progress on stderr.
func progress(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

func readTextFile(_ path: String) -> String? {
    try? String(contentsOfFile: path, encoding: .utf8)
}

/// Writes a short value to a sysfs file ("echo VALUE > PATH").
func writeSysfs(_ path: String, _ value: String) throws {
    let fd = open(path, O_WRONLY)
    guard fd >= 0 else { throw PerfError.target("cannot open \(path) for writing: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    let bytes = Array(value.utf8)
    let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    guard n == bytes.count else {
        throw PerfError.target("writing '\(value)' to \(path) failed: \(String(cString: strerror(errno)))")
    }
}

func kernelRelease() -> String {
    var name = utsname()
    uname(&name)
    return withUnsafeBytes(of: name.release) { raw in
        let bytes = raw.prefix { $0 != 0 }
        return String(decoding: bytes, as: UTF8.self)
    }
}
