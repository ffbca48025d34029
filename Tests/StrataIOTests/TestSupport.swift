// TestSupport — helpers shared by the StrataIO tests: temporary directories, file inspection,
// page-aligned scratch memory, a seeded random generator, external commands (losetup, mount)
// and a check that an operation throws exactly the expected `IOError`.
//
// Everything lives in `enum TestSupport` so that other test files added to this target cannot
// collide with these names.

import Foundation
import StrataIO
import Testing

#if canImport(Glibc)
import Glibc
#endif

enum TestSupport {
    // MARK: Temporary directories

    /// Creates a fresh, empty directory under /tmp (mkdtemp) and returns its path.
    static func makeTemporaryDirectory(label: String = "strata-test") throws -> String {
        var template = Array("/tmp/\(label).XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard made != nil else {
            throw TestSupportError("mkdtemp in /tmp failed: \(String(cString: strerror(errno)))")
        }
        return template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// Removes a directory tree, restoring write permission on the way so chmod'ed files go too.
    /// Refuses anything outside /tmp, as a guard against a bad path reaching `rm -r`.
    static func removeDirectory(_ path: String) {
        precondition(path.hasPrefix("/tmp/") && !path.contains(".."), "refusing to remove \(path)")
        _ = chmod(path, 0o755)
        try? FileManager.default.removeItem(atPath: path)
    }

    /// Runs `body` with a fresh temporary directory that is removed afterwards, however `body` ends.
    static func withTemporaryDirectory<Result>(label: String = "strata-test",
                                               _ body: (String) throws -> Result) throws -> Result {
        let directory = try makeTemporaryDirectory(label: label)
        defer { removeDirectory(directory) }
        return try body(directory)
    }

    // MARK: Files

    /// lstat, or nil when the path does not exist.
    static func fileStatus(_ path: String) -> stat? {
        var info = stat()
        return lstat(path, &info) == 0 ? info : nil
    }

    static func exists(_ path: String) -> Bool { fileStatus(path) != nil }

    static func sizeBytes(_ path: String) -> UInt64? { fileStatus(path).map { UInt64($0.st_size) } }

    /// Bytes of storage actually allocated to the file (st_blocks is in 512-byte units).
    static func allocatedBytes(_ path: String) -> UInt64? { fileStatus(path).map { UInt64($0.st_blocks) * 512 } }

    /// Creates (or replaces) a regular file holding exactly `bytes`, with ordinary buffered I/O.
    static func writeFile(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws {
        let fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, mode)
        guard fd >= 0 else { throw TestSupportError("create \(path): \(String(cString: strerror(errno)))") }
        defer { _ = close(fd) }
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            guard n > 0 else { throw TestSupportError("write \(path): \(String(cString: strerror(errno)))") }
            done += n
        }
    }

    /// Creates a sparse regular file of `sizeBytes` (ftruncate), as an outside program would.
    static func makeSparseFile(_ path: String, sizeBytes: UInt64) throws {
        let fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0o644)
        guard fd >= 0 else { throw TestSupportError("create \(path): \(String(cString: strerror(errno)))") }
        defer { _ = close(fd) }
        guard ftruncate(fd, off_t(sizeBytes)) == 0 else {
            throw TestSupportError("ftruncate \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// Reads `length` bytes at `offset` with ordinary buffered I/O (no O_DIRECT): the view of the
    /// file that does not go through the code under test.
    static func readFile(_ path: String, offset: UInt64 = 0, length: Int? = nil) throws -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw TestSupportError("open \(path): \(String(cString: strerror(errno)))") }
        defer { _ = close(fd) }
        let count = length ?? Int(UInt64(fileStatus(path)?.st_size ?? 0) - offset)
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset) + off_t(done)) }
            guard n > 0 else { throw TestSupportError("read \(path) at \(offset + UInt64(done)): short read (\(n))") }
            done += n
        }
        return bytes
    }

    // MARK: Aligned scratch memory

    /// Runs `body` with `byteCount` bytes of zeroed memory aligned to `alignment` (posix_memalign),
    /// independent of `AlignedBufferPool` so that device tests do not depend on the pool.
    static func withAlignedMemory<Result>(byteCount: Int, alignment: Int = 4096,
                                          _ body: (UnsafeMutableRawBufferPointer) throws -> Result) rethrows -> Result {
        var memory: UnsafeMutableRawPointer? = nil
        let rc = posix_memalign(&memory, alignment, max(byteCount, 1))
        precondition(rc == 0 && memory != nil, "posix_memalign(\(alignment), \(byteCount)) failed: \(rc)")
        defer { free(memory) }
        memset(memory!, 0, max(byteCount, 1))
        return try body(UnsafeMutableRawBufferPointer(start: memory!, count: byteCount))
    }

    /// Bytes that depend on where they are meant to land and on a stamp, so data written to the
    /// wrong offset, or stale data, cannot pass for the right data.
    static func pattern(offset: UInt64, count: Int, stamp: UInt8) -> [UInt8] {
        (0..<count).map { index in
            let position = offset + UInt64(index)
            return UInt8(truncatingIfNeeded: (position >> 9) &* 31 &+ position &* 7) ^ stamp
        }
    }

    // MARK: Seeds

    /// SplitMix64: small, fast and fully determined by its seed, so a failure replays.
    struct SeededGenerator: RandomNumberGenerator {
        private var state: UInt64
        init(seed: UInt64) { state = seed }
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    /// Seeds for model-based tests: `STRATA_TEST_SEED=<n>` replays one seed; otherwise the fixed
    /// seeds plus one fresh seed per run (printed in every failure message).
    static func seeds(fixed: [UInt64]) -> [UInt64] {
        if let text = ProcessInfo.processInfo.environment["STRATA_TEST_SEED"], let seed = UInt64(text) {
            return [seed]
        }
        return fixed + [UInt64.random(in: 1...UInt64.max)]
    }

    // MARK: Errors

    /// Runs `body`, which must throw exactly `expected`; when the error names a path, its
    /// description must contain that path. Returns the error thrown, if any.
    @discardableResult
    static func expectIOError<Result: ~Copyable>(_ expected: IOError, mentioning path: String?,
                                                 sourceLocation: SourceLocation = #_sourceLocation,
                                                 _ body: () throws -> Result) -> IOError? {
        do {
            _ = try body()
            Issue.record("expected \(expected), but nothing was thrown", sourceLocation: sourceLocation)
            return nil
        } catch let error as IOError {
            #expect(error == expected, sourceLocation: sourceLocation)
            if let path {
                #expect(error.description.contains(path), "\"\(error)\" does not name \(path)",
                        sourceLocation: sourceLocation)
            }
            return error
        } catch {
            Issue.record("expected \(expected), got \(error)", sourceLocation: sourceLocation)
            return nil
        }
    }

    // MARK: External commands

    struct CommandResult {
        var status: Int32
        var output: String
        var errorOutput: String
    }

    /// Runs an executable (absolute path) and waits for it.
    static func run(_ executable: String, _ arguments: [String]) throws -> CommandResult {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let output = Pipe()
        let errorOutput = Pipe()
        process.standardOutput = output
        process.standardError = errorOutput
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let outputData = output.fileHandleForReading.readDataToEndOfFile()
        let errorData = errorOutput.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return CommandResult(status: process.terminationStatus,
                             output: String(decoding: outputData, as: UTF8.self),
                             errorOutput: String(decoding: errorData, as: UTF8.self))
    }

    /// Runs a command that must succeed; throws with its stderr otherwise.
    @discardableResult
    static func runChecked(_ executable: String, _ arguments: [String]) throws -> String {
        let result = try run(executable, arguments)
        guard result.status == 0 else {
            throw TestSupportError("\(executable) \(arguments.joined(separator: " ")) exited \(result.status): \(result.errorOutput)")
        }
        return result.output
    }

    /// First of `candidates` that exists and is executable.
    static func executable(_ candidates: [String]) -> String? {
        candidates.first { access($0, X_OK) == 0 }
    }

    static let losetupPath = executable(["/usr/sbin/losetup", "/sbin/losetup", "/usr/bin/losetup"])
    static let mkfsExt4Path = executable(["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"])
    static let mountPath = executable(["/usr/bin/mount", "/bin/mount", "/usr/sbin/mount"])
    static let umountPath = executable(["/usr/bin/umount", "/bin/umount", "/usr/sbin/umount"])
    static let addpartPath = executable(["/usr/bin/addpart", "/usr/sbin/addpart", "/sbin/addpart"])

    /// Loop devices can be attached: root, /dev/loop-control and losetup are there, and a
    /// trial attach of a small file works (a container may have the node but forbid it).
    static let canUseLoopDevices: Bool = {
        guard geteuid() == 0, access("/dev/loop-control", F_OK) == 0, losetupPath != nil else { return false }
        do {
            return try withTemporaryDirectory(label: "strata-loop-probe") { directory in
                let file = "\(directory)/probe.img"
                try makeSparseFile(file, sizeBytes: 1 << 20)
                try withLoopDevice(backingFile: file) { _ in }
                return true
            }
        } catch {
            return false
        }
    }()

    /// Loop devices work and an ext4 file system can be made and mounted.
    static let canMountExt4: Bool = canUseLoopDevices && mkfsExt4Path != nil && mountPath != nil && umountPath != nil

    /// Attaches `backingFile` to a free loop device, runs `body` with the device path and
    /// detaches it afterwards, however `body` ends.
    /// `readOnly` attaches it read-only; `partitionScan` makes the kernel read its partition table.
    static func withLoopDevice<Result>(backingFile: String, readOnly: Bool = false, partitionScan: Bool = false,
                                       _ body: (String) throws -> Result) throws -> Result {
        guard let losetup = losetupPath else { throw TestSupportError("losetup not found") }
        let flags = (readOnly ? ["--read-only"] : []) + (partitionScan ? ["--partscan"] : [])
        let device = try runChecked(losetup, flags + ["--find", "--show", backingFile])
            .trimmingCharacters(in: .whitespacesAndNewlines)
        guard device.hasPrefix("/dev/loop") else { throw TestSupportError("losetup printed \"\(device)\"") }
        defer { _ = try? run(losetup, ["--detach", device]) }
        return try body(device)
    }

    /// Mounts `device` (ext4) on `mountPoint`, runs `body`, and unmounts, however `body` ends.
    static func withMount<Result>(device: String, at mountPoint: String, _ body: () throws -> Result) throws -> Result {
        guard let mount = mountPath, let umount = umountPath else { throw TestSupportError("mount/umount not found") }
        try runChecked(mount, ["-t", "ext4", device, mountPoint])
        defer { _ = try? run(umount, [mountPoint]) }
        return try body()
    }
}

/// A failure of the test scaffolding itself (not of the code under test).
struct TestSupportError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
