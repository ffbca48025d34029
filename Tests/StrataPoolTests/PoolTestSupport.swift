// PoolTestSupport — temporary pool directories, file snapshots and byte surgery for pool tests.

import Foundation
import StrataIO
import Testing
@testable import StrataPool

#if canImport(Glibc)
import Glibc
#endif

enum PoolTestSupport {
    static let mib: UInt64 = 1 << 20

    /// Runs `body` with a fresh directory under /tmp, removed afterwards.
    static func withDirectory<Result>(_ body: (String) throws -> Result) throws -> Result {
        var template = Array("/tmp/strata-pool-test.XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "mkdtemp failed")
        let directory = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        defer { try? FileManager.default.removeItem(atPath: directory) }
        return try body(directory)
    }

    /// The bytes of a file (buffered read; test files are sparse and small).
    static func contents(_ path: String) -> Data { FileManager.default.contents(atPath: path) ?? Data() }

    /// Checksums of every file in `paths` (nil when missing): "nothing changed" checks.
    static func fingerprint(_ paths: [String]) -> [UInt32?] {
        paths.map { path in
            guard let data = FileManager.default.contents(atPath: path) else { return nil }
            return data.withUnsafeBytes { CRC32C.checksum($0) }
        }
    }

    /// Overwrites `count` bytes at `offset` of a file with a pattern (buffered, then fsync).
    static func scribble(_ path: String, offset: UInt64, count: Int, byte: UInt8 = 0x5A) {
        let fd = open(path, O_WRONLY)
        guard fd >= 0 else { fatalError("open \(path): errno \(errno)") }
        defer { close(fd) }
        let bytes = [UInt8](repeating: byte, count: count)
        let written = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, count, off_t(offset)) }
        guard written == count else { fatalError("pwrite \(path): \(written) of \(count) bytes") }
        fsync(fd)
    }

    static func copyFile(_ from: String, _ to: String) throws {
        try? FileManager.default.removeItem(atPath: to)
        try FileManager.default.copyItem(atPath: from, toPath: to)
    }

    static func truncate(_ path: String, to size: UInt64) {
        let rc = Glibc.truncate(path, off_t(size))
        guard rc == 0 else { fatalError("truncate \(path) to \(size): errno \(errno)") }
    }

    /// A three-device pool (data 256 MiB, metadata 128 MiB, log 64 MiB) in `directory`.
    static func members(_ directory: String) -> [Pool.MemberSpec] {
        [Pool.MemberSpec(path: directory + "/data0", role: .data, createSizeBytes: 256 * mib),
         Pool.MemberSpec(path: directory + "/meta0", role: .metadata, createSizeBytes: 128 * mib),
         Pool.MemberSpec(path: directory + "/log0", role: .log, createSizeBytes: 64 * mib)]
    }

    /// Expects `body` to throw a PoolError matching `matches`, and returns its message.
    @discardableResult
    static func expectPoolError(_ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation,
                                _ matches: (PoolError) -> Bool) -> String {
        do {
            try body()
            Issue.record("expected a PoolError, nothing was thrown", sourceLocation: sourceLocation)
            return ""
        } catch let error as PoolError {
            #expect(matches(error), "unexpected error: \(error)", sourceLocation: sourceLocation)
            return error.description
        } catch {
            Issue.record("expected a PoolError, got \(error)", sourceLocation: sourceLocation)
            return ""
        }
    }
}
