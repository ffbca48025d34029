// BlockDevice tests. On regular files in a temporary directory: creation (sparse, at the size
// asked for), reopening, O_DIRECT round trips checked against a plain buffered read of the same
// file, FUA writes, flush, discard, and every refusal, each checked for the exact `IOError`, for
// naming the path, and for leaving the file system as it was. On loop devices (root only):
// block-size discovery, round trips at 512-byte granularity checked against the backing file,
// O_EXCL against a second opener, refusal of a read-only device, of a mounted device and of a
// disk whose partition is mounted, and discard.

import CShims
import Foundation
import StrataIO
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("BlockDevice on regular files")
struct BlockDeviceFileTests {
    static let block: UInt64 = 4096

    /// Opens (creating) a fresh sparse file of `sizeBytes` in a temporary directory.
    static func withNewDevice<Result>(sizeBytes: UInt64 = 1 << 20,
                                      _ body: (BlockDevice, String) throws -> Result) throws -> Result {
        try TestSupport.withTemporaryDirectory { directory in
            let path = "\(directory)/device.img"
            let device = try BlockDevice.open(path, options: .init(createSizeBytes: sizeBytes))
            return try body(device, path)
        }
    }

    // MARK: Opening

    @Test("creating makes a sparse file of exactly the size asked for")
    func createSparse() throws {
        try TestSupport.withTemporaryDirectory { directory in
            let path = "\(directory)/new.img"
            let sizeBytes: UInt64 = 64 << 20
            #expect(!TestSupport.exists(path))
            let device = try BlockDevice.open(path, options: .init(createSizeBytes: sizeBytes))
            #expect(device.path == path)
            #expect(device.kind == .file)
            #expect(device.sizeBytes == sizeBytes)
            #expect(device.logicalBlockSize == 4096)
            #expect(device.physicalBlockSize >= device.logicalBlockSize)
            #expect(!device.isReadOnly)
            #expect(device.fileDescriptor >= 0)
            let info = try #require(TestSupport.fileStatus(path))
            #expect(info.st_mode & S_IFMT == S_IFREG)
            #expect(UInt64(info.st_size) == sizeBytes)
            // Sparse: next to nothing allocated for 64 MiB.
            let allocated = try #require(TestSupport.allocatedBytes(path))
            #expect(allocated <= 64 << 10, "\(allocated) bytes allocated for a new sparse file")
            // O_DIRECT is in effect: the descriptor was opened with it.
            #expect(fcntl(device.fileDescriptor, F_GETFL) & CShims_O_DIRECT != 0)
        }
    }

    @Test("an existing file opens at its size rounded down to whole blocks, and is not resized")
    func openExisting() throws {
        try TestSupport.withTemporaryDirectory { directory in
            let path = "\(directory)/existing.img"
            let fileBytes: UInt64 = 3 * 4096 + 1000
            var content = TestSupport.pattern(offset: 0, count: Int(fileBytes), stamp: 0x5A)
            try TestSupport.writeFile(path, content)
            let device = try BlockDevice.open(path)
            #expect(device.kind == .file)
            #expect(device.sizeBytes == 3 * 4096)
            #expect(device.logicalBlockSize == 4096)
            #expect(TestSupport.sizeBytes(path) == fileBytes)
            // What is there is read back unchanged.
            try TestSupport.withAlignedMemory(byteCount: 3 * 4096) { memory in
                try device.read(into: memory, at: 0)
                #expect(Array(memory) == Array(content[0..<(3 * 4096)]))
            }
            // Opening again, even with a larger creation size, does not resize or rewrite it.
            let again = try BlockDevice.open(path, options: .init(createSizeBytes: 3 * 4096, minimumSizeBytes: 3 * 4096))
            #expect(again.sizeBytes == 3 * 4096)
            content = try TestSupport.readFile(path)
            #expect(content == TestSupport.pattern(offset: 0, count: Int(fileBytes), stamp: 0x5A))
        }
    }

    @Test("an existing file smaller than createSizeBytes is refused with tooSmall, not resized")
    func existingSmallerThanCreateSize() throws {
        try TestSupport.withTemporaryDirectory { directory in
            let path = "\(directory)/small.img"
            try TestSupport.makeSparseFile(path, sizeBytes: 1 << 20)
            TestSupport.expectIOError(.tooSmall(path: path, sizeBytes: 1 << 20, requiredBytes: 64 << 20), mentioning: path) {
                try BlockDevice.open(path, options: .init(createSizeBytes: 64 << 20))
            }
            #expect(TestSupport.sizeBytes(path) == 1 << 20)
        }
    }

    @Test("a read-only open of a 0444 file works and refuses every write")
    func readOnlyOpen() throws {
        try TestSupport.withTemporaryDirectory { directory in
            let path = "\(directory)/readonly.img"
            let content = TestSupport.pattern(offset: 0, count: 8192, stamp: 0x33)
            try TestSupport.writeFile(path, content, mode: 0o444)
            #expect(chmod(path, 0o444) == 0)
            let device = try BlockDevice.open(path, options: .init(readOnly: true))
            #expect(device.isReadOnly)
            #expect(device.sizeBytes == 8192)
            try TestSupport.withAlignedMemory(byteCount: 8192) { memory in
                try device.read(into: memory, at: 0)
                #expect(Array(memory) == content)
                memset(memory.baseAddress!, 0xEE, memory.count)
                TestSupport.expectIOError(.readOnly(path: path), mentioning: path) {
                    try device.write(UnsafeRawBufferPointer(memory), at: 0)
                }
                TestSupport.expectIOError(.readOnly(path: path), mentioning: path) {
                    try device.write(UnsafeRawBufferPointer(memory), at: 0, fua: true)
                }
                TestSupport.expectIOError(.readOnly(path: path), mentioning: path) { try device.flush() }
                TestSupport.expectIOError(.readOnly(path: path), mentioning: path) {
                    try device.discard(offset: 0, length: 4096)
                }
            }
            #expect(try TestSupport.readFile(path) == content)
        }
    }

    // MARK: Refusals when opening

    @Test("a missing path without createSizeBytes is notFound, and nothing is created")
    func missingWithoutCreate() throws {
        try TestSupport.withTemporaryDirectory { directory in
            let path = "\(directory)/missing.img"
            TestSupport.expectIOError(.notFound(path: path), mentioning: path) { try BlockDevice.open(path) }
            #expect(!TestSupport.exists(path))
            // Read-only wins over create: nothing may be created for a read-only open.
            TestSupport.expectIOError(.notFound(path: path), mentioning: path) {
                try BlockDevice.open(path, options: .init(readOnly: true, createSizeBytes: 1 << 20))
            }
            #expect(!TestSupport.exists(path))
            TestSupport.expectIOError(.notFound(path: ""), mentioning: nil) { try BlockDevice.open("") }
        }
    }

    @Test("a missing parent directory with createSizeBytes is notFound, and nothing is created")
    func missingParentWithCreate() throws {
        try TestSupport.withTemporaryDirectory { directory in
            let path = "\(directory)/no-such-directory/device.img"
            TestSupport.expectIOError(.notFound(path: path), mentioning: path) {
                try BlockDevice.open(path, options: .init(createSizeBytes: 1 << 20))
            }
            #expect(!TestSupport.exists("\(directory)/no-such-directory"))
        }
    }

    @Test("a directory is refused with notAFileOrBlockDevice")
    func directory() throws {
        try TestSupport.withTemporaryDirectory { directory in
            let path = "\(directory)/subdirectory"
            #expect(mkdir(path, 0o755) == 0)
            let error = TestSupport.expectIOError(.notAFileOrBlockDevice(path: path, kind: "directory"), mentioning: path) {
                try BlockDevice.open(path, options: .init(createSizeBytes: 1 << 20))
            }
            #expect(error?.description.contains("directory") == true)
            let info = try #require(TestSupport.fileStatus(path))
            #expect(info.st_mode & S_IFMT == S_IFDIR)
        }
    }

    @Test("a FIFO is refused with notAFileOrBlockDevice, without being opened")
    func fifo() throws {
        try TestSupport.withTemporaryDirectory { directory in
            let path = "\(directory)/pipe"
            #expect(mkfifo(path, 0o644) == 0)
            TestSupport.expectIOError(.notAFileOrBlockDevice(path: path, kind: "FIFO"), mentioning: path) {
                try BlockDevice.open(path)
            }
        }
    }

    @Test("a character device is refused with notAFileOrBlockDevice")
    func characterDevice() {
        TestSupport.expectIOError(.notAFileOrBlockDevice(path: "/dev/null", kind: "character device"), mentioning: "/dev/null") {
            try BlockDevice.open("/dev/null")
        }
    }

    @Test("a file without write permission is readOnly, even for root, and is left unchanged")
    func readOnlyFile() throws {
        try TestSupport.withTemporaryDirectory { directory in
            let path = "\(directory)/locked.img"
            let content = TestSupport.pattern(offset: 0, count: 16_384, stamp: 0x77)
            try TestSupport.writeFile(path, content)
            #expect(chmod(path, 0o444) == 0)
            TestSupport.expectIOError(.readOnly(path: path), mentioning: path) { try BlockDevice.open(path) }
            TestSupport.expectIOError(.readOnly(path: path), mentioning: path) {
                try BlockDevice.open(path, options: .init(createSizeBytes: 1 << 20))
            }
            #expect(try TestSupport.readFile(path) == content)
            #expect(TestSupport.fileStatus(path).map { $0.st_mode & 0o777 } == 0o444)
        }
    }

    @Test("an existing file smaller than minimumSizeBytes is tooSmall, and keeps its size")
    func existingTooSmall() throws {
        try TestSupport.withTemporaryDirectory { directory in
            let path = "\(directory)/small.img"
            let content = TestSupport.pattern(offset: 0, count: 8192, stamp: 0x11)
            try TestSupport.writeFile(path, content)
            TestSupport.expectIOError(.tooSmall(path: path, sizeBytes: 8192, requiredBytes: 16_384), mentioning: path) {
                try BlockDevice.open(path, options: .init(minimumSizeBytes: 16_384))
            }
            #expect(TestSupport.sizeBytes(path) == 8192)
            #expect(try TestSupport.readFile(path) == content)
            // Less than one block: nothing usable at all.
            let tiny = "\(directory)/tiny.img"
            try TestSupport.writeFile(tiny, [UInt8](repeating: 1, count: 1000))
            TestSupport.expectIOError(.tooSmall(path: tiny, sizeBytes: 0, requiredBytes: 4096), mentioning: tiny) {
                try BlockDevice.open(tiny)
            }
            #expect(TestSupport.sizeBytes(tiny) == 1000)
        }
    }

    @Test("a file created for an open that then fails is removed again")
    func failedCreateLeavesNothing() throws {
        try TestSupport.withTemporaryDirectory { directory in
            let path = "\(directory)/created.img"
            TestSupport.expectIOError(.tooSmall(path: path, sizeBytes: 8192, requiredBytes: 1 << 20), mentioning: path) {
                try BlockDevice.open(path, options: .init(createSizeBytes: 8192, minimumSizeBytes: 1 << 20))
            }
            #expect(!TestSupport.exists(path))
        }
    }

    @Test("a creation size that is not a positive multiple of 4096 is misaligned, and nothing is created",
          arguments: [0, 1, 4095, 4097, (1 << 20) + 512, (64 << 20) - 1] as [UInt64])
    func misalignedCreateSize(sizeBytes: UInt64) throws {
        try TestSupport.withTemporaryDirectory { directory in
            let path = "\(directory)/odd.img"
            TestSupport.expectIOError(.misaligned(path: path, what: "size to create", value: sizeBytes, alignment: 4096),
                                      mentioning: path) {
                try BlockDevice.open(path, options: .init(createSizeBytes: sizeBytes))
            }
            #expect(!TestSupport.exists(path))
        }
    }

    // MARK: I/O

    @Test("writes read back at several offsets including the last block, on both sides of O_DIRECT")
    func roundTrip() throws {
        let sizeBytes: UInt64 = 1 << 20
        try Self.withNewDevice(sizeBytes: sizeBytes) { device, path in
            var model = [UInt8](repeating: 0, count: Int(sizeBytes))
            let writes: [(offset: UInt64, length: Int, stamp: UInt8)] = [
                (0, 4096, 1), (4096, 4096, 2), (12 * 4096, 3 * 4096, 3), (sizeBytes - 4096, 4096, 4),
                (sizeBytes - 5 * 4096, 4 * 4096, 5), (100 * 4096, 64 << 10, 6),
                (4096, 2 * 4096, 7),  // overwrites part of an earlier write and extends past it
            ]
            try TestSupport.withAlignedMemory(byteCount: 64 << 10) { memory in
                for write in writes {
                    let bytes = TestSupport.pattern(offset: write.offset, count: write.length, stamp: write.stamp)
                    let buffer = UnsafeMutableRawBufferPointer(rebasing: memory[0..<write.length])
                    buffer.copyBytes(from: bytes)
                    try device.write(UnsafeRawBufferPointer(buffer), at: write.offset)
                    model.replaceSubrange(Int(write.offset)..<(Int(write.offset) + write.length), with: bytes)
                    // Read straight back through the device, into a scrubbed buffer.
                    memset(buffer.baseAddress!, 0xCC, buffer.count)
                    try device.read(into: buffer, at: write.offset)
                    #expect(Array(buffer) == bytes, "read back at \(write.offset) length \(write.length)")
                }
            }
            // The whole device, read through the device, matches the model (unwritten parts are zero)...
            try TestSupport.withAlignedMemory(byteCount: Int(sizeBytes)) { memory in
                try device.read(into: memory, at: 0)
                #expect(Array(memory) == model)
            }
            // ...and so does the file read with plain buffered I/O, past the code under test.
            #expect(try TestSupport.readFile(path) == model)
            #expect(TestSupport.sizeBytes(path) == sizeBytes)
            // And a fresh open of the same file sees the same bytes.
            let reopened = try BlockDevice.open(path)
            #expect(reopened.sizeBytes == sizeBytes)
            try TestSupport.withAlignedMemory(byteCount: 8192) { memory in
                try reopened.read(into: memory, at: sizeBytes - 8192)
                #expect(Array(memory) == Array(model[Int(sizeBytes - 8192)...]))
            }
        }
    }

    @Test("FUA writes and flush succeed and the data is there")
    func fuaAndFlush() throws {
        try Self.withNewDevice { device, path in
            let bytes = TestSupport.pattern(offset: 8192, count: 8192, stamp: 0x42)
            try TestSupport.withAlignedMemory(byteCount: 8192) { memory in
                memory.copyBytes(from: bytes)
                try device.write(UnsafeRawBufferPointer(memory), at: 8192, fua: true)
                memset(memory.baseAddress!, 0, memory.count)
                try device.read(into: memory, at: 8192)
                #expect(Array(memory) == bytes)
            }
            try device.flush()
            #expect(try TestSupport.readFile(path, offset: 8192, length: 8192) == bytes)
        }
    }

    @Test("discard punches a hole: the range reads as zeroes, its neighbours are untouched")
    func discardPunchesHole() throws {
        let sizeBytes: UInt64 = 1 << 20
        try Self.withNewDevice(sizeBytes: sizeBytes) { device, path in
            let written = TestSupport.pattern(offset: 0, count: Int(sizeBytes), stamp: 0x99)
            try TestSupport.withAlignedMemory(byteCount: Int(sizeBytes)) { memory in
                memory.copyBytes(from: written)
                try device.write(UnsafeRawBufferPointer(memory), at: 0)
                try device.flush()
                let allocatedBefore = try #require(TestSupport.allocatedBytes(path))
                #expect(allocatedBefore >= sizeBytes)
                try device.discard(offset: 64 << 10, length: 256 << 10)
                try device.read(into: memory, at: 0)
                var expected = written
                expected.replaceSubrange((64 << 10)..<(320 << 10), with: repeatElement(0, count: 256 << 10))
                #expect(Array(memory) == expected)
                #expect(TestSupport.sizeBytes(path) == sizeBytes, "discard must keep the size")
                let allocatedAfter = try #require(TestSupport.allocatedBytes(path))
                #expect(allocatedAfter <= allocatedBefore - (256 << 10), "the hole was not punched")
            }
        }
    }

    @Test("discard refuses misaligned, empty and out-of-range ranges")
    func discardRefusals() throws {
        let sizeBytes: UInt64 = 1 << 20
        try Self.withNewDevice(sizeBytes: sizeBytes) { device, path in
            TestSupport.expectIOError(.misaligned(path: path, what: "discard offset", value: 512, alignment: 4096), mentioning: path) {
                try device.discard(offset: 512, length: 4096)
            }
            TestSupport.expectIOError(.misaligned(path: path, what: "discard length", value: 100, alignment: 4096), mentioning: path) {
                try device.discard(offset: 0, length: 100)
            }
            TestSupport.expectIOError(.misaligned(path: path, what: "discard length", value: 0, alignment: 4096), mentioning: path) {
                try device.discard(offset: 0, length: 0)
            }
            TestSupport.expectIOError(.outOfRange(path: path, offset: sizeBytes - 4096, length: 8192, sizeBytes: sizeBytes),
                                      mentioning: path) {
                try device.discard(offset: sizeBytes - 4096, length: 8192)
            }
            TestSupport.expectIOError(.outOfRange(path: path, offset: sizeBytes + 4096, length: 4096, sizeBytes: sizeBytes),
                                      mentioning: path) {
                try device.discard(offset: sizeBytes + 4096, length: 4096)
            }
        }
    }

    // MARK: Refusals of requests

    @Test("misaligned offsets, lengths and buffer addresses are refused, naming what is wrong")
    func misalignedRequests() throws {
        let sizeBytes: UInt64 = 1 << 20
        try Self.withNewDevice(sizeBytes: sizeBytes) { device, path in
            TestSupport.withAlignedMemory(byteCount: 3 * 4096) { memory in
                memset(memory.baseAddress!, 0xAB, memory.count)
                let whole = UnsafeMutableRawBufferPointer(rebasing: memory[0..<4096])
                for offset: UInt64 in [1, 512, 4095, 4097, sizeBytes - 512] {
                    let expected = IOError.misaligned(path: path, what: "offset", value: offset, alignment: 4096)
                    TestSupport.expectIOError(expected, mentioning: path) { try device.read(into: whole, at: offset) }
                    TestSupport.expectIOError(expected, mentioning: path) { try device.write(UnsafeRawBufferPointer(whole), at: offset) }
                }
                for length in [1, 512, 4095, 4097, 2 * 4096 + 512] {
                    let buffer = UnsafeMutableRawBufferPointer(rebasing: memory[0..<length])
                    let expected = IOError.misaligned(path: path, what: "length", value: UInt64(length), alignment: 4096)
                    TestSupport.expectIOError(expected, mentioning: path) { try device.read(into: buffer, at: 0) }
                    TestSupport.expectIOError(expected, mentioning: path) { try device.write(UnsafeRawBufferPointer(buffer), at: 0) }
                }
                for shift in [1, 512, 2048, 4095] {
                    let buffer = UnsafeMutableRawBufferPointer(rebasing: memory[shift..<(shift + 4096)])
                    let address = UInt64(UInt(bitPattern: buffer.baseAddress!))
                    let expected = IOError.misaligned(path: path, what: "buffer address", value: address, alignment: 4096)
                    TestSupport.expectIOError(expected, mentioning: path) { try device.read(into: buffer, at: 0) }
                    TestSupport.expectIOError(expected, mentioning: path) { try device.write(UnsafeRawBufferPointer(buffer), at: 0) }
                    TestSupport.expectIOError(expected, mentioning: path) {
                        try device.write(UnsafeRawBufferPointer(buffer), at: 0, fua: true)
                    }
                }
                // Refused reads did not touch the buffer; refused writes did not touch the file.
                #expect(memory.allSatisfy { $0 == 0xAB })
            }
            let onDisk = try TestSupport.readFile(path)
            #expect(onDisk == [UInt8](repeating: 0, count: Int(sizeBytes)), "a refused request changed the file")
        }
    }

    @Test("ranges past the end are outOfRange, lengths of zero or above the maximum are badLength")
    func outOfRangeAndBadLength() throws {
        let sizeBytes: UInt64 = 1 << 20
        try Self.withNewDevice(sizeBytes: sizeBytes) { device, path in
            TestSupport.withAlignedMemory(byteCount: 8192) { memory in
                memset(memory.baseAddress!, 0xAB, memory.count)
                let cases: [(offset: UInt64, length: Int)] = [
                    (sizeBytes, 4096), (sizeBytes - 4096, 8192), (sizeBytes + 4096, 4096),
                    (UInt64.max - 4095, 4096), (UInt64(Int64.max) + 1, 4096),
                ]
                for (offset, length) in cases {
                    let buffer = UnsafeMutableRawBufferPointer(rebasing: memory[0..<length])
                    let expected = IOError.outOfRange(path: path, offset: offset, length: UInt64(length), sizeBytes: sizeBytes)
                    TestSupport.expectIOError(expected, mentioning: path) { try device.read(into: buffer, at: offset) }
                    TestSupport.expectIOError(expected, mentioning: path) { try device.write(UnsafeRawBufferPointer(buffer), at: offset) }
                }
                let empty = UnsafeMutableRawBufferPointer(start: memory.baseAddress, count: 0)
                let zeroLength = IOError.badLength(path: path, length: 0, maximum: BlockDevice.requestBytesMax)
                TestSupport.expectIOError(zeroLength, mentioning: path) { try device.read(into: empty, at: 0) }
                TestSupport.expectIOError(zeroLength, mentioning: path) { try device.write(UnsafeRawBufferPointer(empty), at: 0) }
                #expect(memory.allSatisfy { $0 == 0xAB })
            }
            // Above the per-request maximum (checked without memory behind it: validation only).
            let tooLong = Int(BlockDevice.requestBytesMax) + 4096
            TestSupport.expectIOError(.badLength(path: path, length: UInt64(tooLong), maximum: BlockDevice.requestBytesMax),
                                      mentioning: path) {
                try device.validate(offset: 0, length: tooLong, address: nil, write: false)
            }
            // The last block is in range; one block further is not.
            try device.validate(offset: sizeBytes - 4096, length: 4096, address: nil, write: true)
            let onDisk = try TestSupport.readFile(path)
            #expect(onDisk == [UInt8](repeating: 0, count: Int(sizeBytes)), "a refused request changed the file")
        }
    }
}

// MARK: - Block devices

@Suite("BlockDevice on loop devices", .serialized, .enabled(if: TestSupport.canUseLoopDevices,
                                                              "needs root, /dev/loop-control and losetup"))
struct BlockDeviceLoopTests {
    static let sizeBytes: UInt64 = 64 << 20

    /// A 64 MiB backing file attached to a loop device, detached afterwards.
    static func withLoopDevice<Result>(readOnly: Bool = false, partitioned: Bool = false,
                                       _ body: (_ device: String, _ backingFile: String, _ directory: String) throws -> Result) throws -> Result {
        try TestSupport.withTemporaryDirectory(label: "strata-loop") { directory in
            let backingFile = "\(directory)/backing.img"
            try TestSupport.makeSparseFile(backingFile, sizeBytes: sizeBytes)
            return try TestSupport.withLoopDevice(backingFile: backingFile, readOnly: readOnly,
                                                  partitionScan: partitioned) { device in
                if partitioned {
                    // BLKPG (addpart) rather than a partition table: it works whichever partition
                    // table parsers the kernel was built with. Detaching removes the partition.
                    try TestSupport.runChecked(TestSupport.addpartPath!, [
                        device, "1", "\(partitionStartSector)", "\(sizeBytes / 512 - partitionStartSector)",
                    ])
                    try waitForDeviceNode("\(device)p1")
                }
                return try body(device, backingFile, directory)
            }
        }
    }

    /// The partition added by `withLoopDevice(partitioned: true)`: from sector 2048 to the end.
    static let partitionStartSector: UInt64 = 2048

    /// Waits (up to 5 s) for a device node to appear, as the kernel's devtmpfs creates it.
    static func waitForDeviceNode(_ path: String) throws {
        for _ in 0..<100 {
            if TestSupport.fileStatus(path).map({ $0.st_mode & S_IFMT == S_IFBLK }) == true { return }
            usleep(50_000)
        }
        throw TestSupportError("\(path) did not appear")
    }

    /// Runs `body`, which must throw `busy` for `path`; returns the reason given.
    static func expectBusy(_ path: String, sourceLocation: SourceLocation = #_sourceLocation,
                           _ body: () throws -> BlockDevice) -> String? {
        do {
            _ = try body()
            Issue.record("open of \(path) succeeded, expected busy", sourceLocation: sourceLocation)
            return nil
        } catch let error as IOError {
            guard case .busy(let errorPath, let reason) = error else {
                Issue.record("expected busy, got \(error)", sourceLocation: sourceLocation)
                return nil
            }
            #expect(errorPath == path, sourceLocation: sourceLocation)
            #expect(error.description.contains(path), sourceLocation: sourceLocation)
            return reason
        } catch {
            Issue.record("expected busy, got \(error)", sourceLocation: sourceLocation)
            return nil
        }
    }

    @Test("a loop device opens as a 64 MiB block device with 512-byte blocks and round-trips data")
    func openAndRoundTrip() throws {
        try Self.withLoopDevice { path, backingFile, _ in
            let device = try BlockDevice.open(path)
            #expect(device.kind == .blockDevice)
            #expect(device.sizeBytes == Self.sizeBytes)
            #expect(device.logicalBlockSize == 512)
            #expect(device.physicalBlockSize >= 512 && device.physicalBlockSize.nonzeroBitCount == 1)
            #expect(!device.isReadOnly)
            let writes: [(offset: UInt64, length: Int, stamp: UInt8)] = [
                (0, 4096, 1), (512, 512, 2), (3 * 512, 5 * 512, 3), (Self.sizeBytes - 512, 512, 4),
                (Self.sizeBytes - (1 << 20), 1 << 20, 5), (Self.sizeBytes - 1024, 512, 6),
            ]
            /// What [offset, offset+length) must hold: zeroes overlaid with every write in order.
            func expected(offset: UInt64, length: Int) -> [UInt8] {
                var bytes = [UInt8](repeating: 0, count: length)
                for write in writes {
                    let start = max(offset, write.offset)
                    let end = min(offset + UInt64(length), write.offset + UInt64(write.length))
                    guard start < end else { continue }
                    let piece = TestSupport.pattern(offset: start, count: Int(end - start), stamp: write.stamp)
                    bytes.replaceSubrange(Int(start - offset)..<Int(end - offset), with: piece)
                }
                return bytes
            }
            try TestSupport.withAlignedMemory(byteCount: 1 << 20) { memory in
                for write in writes {
                    let bytes = TestSupport.pattern(offset: write.offset, count: write.length, stamp: write.stamp)
                    // A 512-aligned but not page-aligned buffer address is fine on a 512-byte device.
                    let shift = write.length <= (1 << 20) - 512 ? 512 : 0
                    let buffer = UnsafeMutableRawBufferPointer(rebasing: memory[shift..<(shift + write.length)])
                    buffer.copyBytes(from: bytes)
                    try device.write(UnsafeRawBufferPointer(buffer), at: write.offset, fua: write.stamp % 2 == 0)
                    memset(buffer.baseAddress!, 0xCC, buffer.count)
                    try device.read(into: buffer, at: write.offset)
                    #expect(Array(buffer) == bytes, "read back at \(write.offset) length \(write.length)")
                }
                try device.flush()
                // Every written range and an unwritten one, read through the device and from the
                // backing file (past the loop driver and the code under test), holds the model's bytes.
                let ranges = writes.map { ($0.offset, $0.length) } + [(UInt64(4096), 4096), (Self.sizeBytes / 2, 1 << 20)]
                for (offset, length) in ranges {
                    let buffer = UnsafeMutableRawBufferPointer(rebasing: memory[0..<length])
                    try device.read(into: buffer, at: offset)
                    #expect(Array(buffer) == expected(offset: offset, length: length), "device at \(offset) length \(length)")
                    let backing = try TestSupport.readFile(backingFile, offset: offset, length: length)
                    #expect(backing == expected(offset: offset, length: length), "backing file at \(offset) length \(length)")
                }
            }
            // 512-byte granularity is enforced, not 4096 and not 1.
            TestSupport.withAlignedMemory(byteCount: 4096) { memory in
                let buffer = UnsafeMutableRawBufferPointer(rebasing: memory[0..<512])
                TestSupport.expectIOError(.misaligned(path: path, what: "offset", value: 256, alignment: 512), mentioning: path) {
                    try device.read(into: buffer, at: 256)
                }
                let short = UnsafeMutableRawBufferPointer(rebasing: memory[0..<256])
                TestSupport.expectIOError(.misaligned(path: path, what: "length", value: 256, alignment: 512), mentioning: path) {
                    try device.read(into: short, at: 0)
                }
                TestSupport.expectIOError(.outOfRange(path: path, offset: Self.sizeBytes, length: 512, sizeBytes: Self.sizeBytes),
                                          mentioning: path) {
                    try device.read(into: buffer, at: Self.sizeBytes)
                }
            }
        }
    }

    @Test("a second open while the first is open is busy (O_EXCL); it works once the first closes")
    func exclusiveOpen() throws {
        try Self.withLoopDevice { path, _, _ in
            var first: BlockDevice? = try BlockDevice.open(path)
            #expect(first?.kind == .blockDevice)
            let reason = Self.expectBusy(path) { try BlockDevice.open(path) }
            #expect(reason?.contains("exclusively") == true, "reason: \(reason ?? "none")")
            // A read-only open does not claim the device, so it is allowed alongside.
            let reader = try BlockDevice.open(path, options: .init(readOnly: true))
            #expect(reader.sizeBytes == Self.sizeBytes)
            first = nil
            let second = try BlockDevice.open(path)
            #expect(second.sizeBytes == Self.sizeBytes)
        }
    }

    @Test("a mounted device is busy, and the reason names the mount",
          .enabled(if: TestSupport.canMountExt4, "needs mkfs.ext4, mount and umount"))
    func mountedDevice() throws {
        try Self.withLoopDevice { path, _, directory in
            try TestSupport.runChecked(TestSupport.mkfsExt4Path!, ["-q", "-F", path])
            let mountPoint = "\(directory)/mnt"
            #expect(mkdir(mountPoint, 0o755) == 0)
            try TestSupport.withMount(device: path, at: mountPoint) {
                let reason = Self.expectBusy(path) { try BlockDevice.open(path) }
                #expect(reason?.contains("mounted") == true, "reason: \(reason ?? "none")")
                #expect(reason?.contains(mountPoint) == true, "reason: \(reason ?? "none")")
            }
            // Unmounted, the same device opens.
            let device = try BlockDevice.open(path)
            #expect(device.sizeBytes == Self.sizeBytes)
        }
    }

    @Test("a device attached read-only is refused with readOnly, and opens with readOnly: true")
    func readOnlyDevice() throws {
        try Self.withLoopDevice(readOnly: true) { path, _, _ in
            TestSupport.expectIOError(.readOnly(path: path), mentioning: path) { try BlockDevice.open(path) }
            let device = try BlockDevice.open(path, options: .init(readOnly: true))
            #expect(device.isReadOnly && device.kind == .blockDevice && device.sizeBytes == Self.sizeBytes)
            try TestSupport.withAlignedMemory(byteCount: 4096) { memory in
                try device.read(into: memory, at: Self.sizeBytes - 4096)
                #expect(memory.allSatisfy { $0 == 0 })
                TestSupport.expectIOError(.readOnly(path: path), mentioning: path) {
                    try device.write(UnsafeRawBufferPointer(memory), at: 0)
                }
            }
        }
    }

    @Test("a device is busy when one of its partitions is mounted",
          .enabled(if: TestSupport.canMountExt4 && TestSupport.addpartPath != nil, "needs mkfs.ext4, mount, umount and addpart"))
    func mountedPartition() throws {
        try Self.withLoopDevice(partitioned: true) { path, _, directory in
            let partition = "\(path)p1"
            // The partition opens on its own while nothing holds it (then closes again).
            var partitionDevice: BlockDevice? = try BlockDevice.open(partition)
            #expect(partitionDevice?.sizeBytes == Self.sizeBytes - Self.partitionStartSector * 512)
            partitionDevice = nil
            try TestSupport.runChecked(TestSupport.mkfsExt4Path!, ["-q", "-F", partition])
            let mountPoint = "\(directory)/mnt"
            #expect(mkdir(mountPoint, 0o755) == 0)
            try TestSupport.withMount(device: partition, at: mountPoint) {
                // The whole disk: refused because of its partition's mount, found through /sys.
                let reason = Self.expectBusy(path) { try BlockDevice.open(path) }
                #expect(reason?.contains("mounted at \(mountPoint)") == true, "reason: \(reason ?? "none")")
                let partitionReason = Self.expectBusy(partition) { try BlockDevice.open(partition) }
                #expect(partitionReason?.contains("mounted at \(mountPoint)") == true, "reason: \(partitionReason ?? "none")")
            }
        }
    }

    @Test("discard on a block device is accepted at 512-byte granularity")
    func blockDiscard() throws {
        try Self.withLoopDevice { path, _, _ in
            let device = try BlockDevice.open(path)
            try device.discard(offset: 512, length: 3 * 512)
            try device.discard(offset: 0, length: Self.sizeBytes)
            TestSupport.expectIOError(.misaligned(path: path, what: "discard offset", value: 256, alignment: 512), mentioning: path) {
                try device.discard(offset: 256, length: 512)
            }
            TestSupport.expectIOError(.outOfRange(path: path, offset: 512, length: Self.sizeBytes, sizeBytes: Self.sizeBytes),
                                      mentioning: path) {
                try device.discard(offset: 512, length: Self.sizeBytes)
            }
        }
    }
}
