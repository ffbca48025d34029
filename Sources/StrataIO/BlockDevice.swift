// BlockDevice — one open file or block device, the unit every engine and pool works on.
//
// Theory. Strata does all data I/O with O_DIRECT, so every request must be aligned to the
// device's logical block size in offset, length and buffer address. A `BlockDevice` learns
// that size once at open (BLKSSZGET for block devices; 4096 for regular files, which is the
// conservative value every Linux file system accepts for O_DIRECT) and checks every request
// against it before anything reaches the kernel: a misaligned request is refused with a typed
// error naming the device and the value, never handed down to fail with a bare EINVAL.
//
// Opening is careful because the caller may point us at the wrong thing. Block devices are
// opened O_EXCL (the kernel refuses it while the device is mounted, used as swap, or claimed
// by md/dm), and we additionally refuse a device listed in /proc/self/mountinfo or having
// holders, including through one of its partitions. Regular files can be created sparse at a
// requested size; if a later check fails, the file we created is removed so a failed open
// changes nothing. A regular file with no write permission bits is treated as read-only even
// for root, which would otherwise be allowed to write it.
//
// The synchronous `read`/`write`/`flush` methods exist for cold paths (labels, tools, tests);
// the hot path goes through an `IOEngine`, which uses the same validation.

#if canImport(Glibc)
import Glibc
#endif
import CShims

public final class BlockDevice: Sendable {
    public enum Kind: String, Sendable { case file, blockDevice = "block device" }

    public struct OpenOptions: Sendable {
        /// Open without write access; writes, flushes and discards are refused.
        public var readOnly: Bool = false
        /// When the path does not exist, create a sparse regular file of this size.
        /// When it exists and is smaller, fail with `tooSmall` (an existing file is never resized).
        public var createSizeBytes: UInt64? = nil
        /// Fail with `tooSmall` when the device is smaller than this.
        public var minimumSizeBytes: UInt64 = 0
        /// Open with O_DIRECT (the default and the only mode the engines are tuned for).
        public var direct: Bool = true
        public init(readOnly: Bool = false, createSizeBytes: UInt64? = nil, minimumSizeBytes: UInt64 = 0,
                    direct: Bool = true) {
            self.readOnly = readOnly
            self.createSizeBytes = createSizeBytes
            self.minimumSizeBytes = minimumSizeBytes
            self.direct = direct
        }
    }

    /// Largest single request: the kernel caps one read/write at 0x7ffff000 bytes; we keep
    /// requests to a power of two below that. Data records are at most 1 MiB anyway.
    public static let requestBytesMax: UInt64 = 1 << 30

    public let path: String
    public let fileDescriptor: Int32
    public let kind: Kind
    public let sizeBytes: UInt64
    public let logicalBlockSize: UInt32
    public let physicalBlockSize: UInt32
    public let isReadOnly: Bool

    private init(path: String, fileDescriptor: Int32, kind: Kind, sizeBytes: UInt64,
                 logicalBlockSize: UInt32, physicalBlockSize: UInt32, isReadOnly: Bool) {
        self.path = path
        self.fileDescriptor = fileDescriptor
        self.kind = kind
        self.sizeBytes = sizeBytes
        self.logicalBlockSize = logicalBlockSize
        self.physicalBlockSize = physicalBlockSize
        self.isReadOnly = isReadOnly
    }

    deinit { _ = close(fileDescriptor) }

    // MARK: Opening

    public static func open(_ path: String, options: OpenOptions = OpenOptions()) throws(IOError) -> BlockDevice {
        guard !path.isEmpty else { throw .notFound(path: path) }
        var info = stat()
        var created = false
        if stat(path, &info) != 0 {
            let code = errno
            guard code == ENOENT, let createSize = options.createSizeBytes, !options.readOnly else {
                throw code == ENOENT ? .notFound(path: path) : .system(path: path, operation: "stat", errno: code)
            }
            guard createSize >= 4096, createSize % 4096 == 0 else {
                throw .misaligned(path: path, what: "size to create", value: createSize, alignment: 4096)
            }
            let fd = Glibc.open(path, O_CREAT | O_EXCL | O_WRONLY | CShims_O_CLOEXEC, 0o644)
            guard fd >= 0 else {
                let code = errno
                throw code == ENOENT ? .notFound(path: path) : .system(path: path, operation: "create", errno: code)
            }
            let truncated = ftruncate(fd, off_t(createSize))
            let truncateErrno = errno
            _ = close(fd)
            guard truncated == 0 else {
                _ = unlink(path)
                throw .system(path: path, operation: "ftruncate to \(createSize) bytes", errno: truncateErrno)
            }
            created = true
            guard stat(path, &info) == 0 else {
                let code = errno
                _ = unlink(path)
                throw .system(path: path, operation: "stat", errno: code)
            }
        }
        // What exists already is never resized: it must hold at least the size it would have
        // been created at (OpenOptions.createSizeBytes).
        var options = options
        if !created, let createSize = options.createSizeBytes {
            options.minimumSizeBytes = max(options.minimumSizeBytes, createSize)
        }
        do {
            return try openExisting(path, info: info, options: options)
        } catch {
            if created { _ = unlink(path) }
            throw error
        }
    }

    private static func openExisting(_ path: String, info: stat, options: OpenOptions) throws(IOError) -> BlockDevice {
        let format = info.st_mode & S_IFMT
        let kind: Kind
        switch format {
        case S_IFREG: kind = .file
        case S_IFBLK: kind = .blockDevice
        case S_IFDIR: throw .notAFileOrBlockDevice(path: path, kind: "directory")
        case S_IFCHR: throw .notAFileOrBlockDevice(path: path, kind: "character device")
        case S_IFIFO: throw .notAFileOrBlockDevice(path: path, kind: "FIFO")
        case S_IFSOCK: throw .notAFileOrBlockDevice(path: path, kind: "socket")
        default: throw .notAFileOrBlockDevice(path: path, kind: "special file")
        }
        if !options.readOnly {
            if kind == .file && info.st_mode & 0o222 == 0 { throw .readOnly(path: path) }
            if kind == .blockDevice {
                // The kernel lets a read-only device (BLKROGET; `ro` in sysfs) be opened O_RDWR and
                // then fails every write with EPERM: refuse it here, as for a read-only file.
                let rdev = UInt64(info.st_rdev)
                if readSmallFile("/sys/dev/block/\(CShims_major(rdev)):\(CShims_minor(rdev))/ro")?.hasPrefix("1") == true {
                    throw .readOnly(path: path)
                }
                try checkNotInUse(path: path, rdev: rdev)
            }
        }
        var flags = (options.readOnly ? O_RDONLY : O_RDWR) | CShims_O_CLOEXEC
        if options.direct { flags |= CShims_O_DIRECT }
        if kind == .blockDevice && !options.readOnly { flags |= CShims_O_EXCL }
        let fd = Glibc.open(path, flags)
        guard fd >= 0 else {
            let code = errno
            switch code {
            case EACCES, EROFS, EPERM: throw .readOnly(path: path)
            case EBUSY: throw .busy(path: path, reason: "opened exclusively elsewhere (mounted, swap, md/dm member or another Strata)")
            case EINVAL where options.direct: throw .system(path: path, operation: "open with O_DIRECT (file system without direct I/O?)", errno: code)
            default: throw .system(path: path, operation: "open", errno: code)
            }
        }
        var sizeBytes: UInt64 = 0
        var logical: UInt32 = 4096
        var physical: UInt32 = 4096
        if kind == .blockDevice {
            var rc = CShims_block_device_size(fd, &sizeBytes)
            if rc == 0 { rc = CShims_block_logical_sector_size(fd, &logical) }
            if rc == 0 { rc = CShims_block_physical_sector_size(fd, &physical) }
            if rc != 0 {
                _ = close(fd)
                throw .system(path: path, operation: "block device ioctl", errno: -rc)
            }
            physical = max(physical, logical)
        } else {
            sizeBytes = UInt64(info.st_size)
        }
        precondition(logical.nonzeroBitCount == 1 && physical.nonzeroBitCount == 1, "sector sizes are powers of two")
        sizeBytes -= sizeBytes % UInt64(logical)
        if sizeBytes < max(options.minimumSizeBytes, UInt64(logical)) {
            _ = close(fd)
            throw .tooSmall(path: path, sizeBytes: sizeBytes, requiredBytes: max(options.minimumSizeBytes, UInt64(logical)))
        }
        return BlockDevice(path: path, fileDescriptor: fd, kind: kind, sizeBytes: sizeBytes,
                           logicalBlockSize: logical, physicalBlockSize: physical, isReadOnly: options.readOnly)
    }

    /// Refuses a block device that is mounted or held (directly or through a partition).
    private static func checkNotInUse(path: String, rdev: UInt64) throws(IOError) {
        var devices = [(CShims_major(rdev), CShims_minor(rdev))]
        // Partitions of a whole disk: /sys/dev/block/M:m/<name>/partition exists, with a dev file.
        let sysDir = "/sys/dev/block/\(devices[0].0):\(devices[0].1)"
        if let dir = opendir(sysDir) {
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
                }
                if name.hasPrefix(".") { continue }
                guard access("\(sysDir)/\(name)/partition", F_OK) == 0,
                      let dev = readSmallFile("\(sysDir)/\(name)/dev") else { continue }
                let parts = dev.split(separator: ":")
                if parts.count == 2, let major = UInt32(parts[0].trimmingSpaces), let minor = UInt32(parts[1].trimmingSpaces) {
                    devices.append((major, minor))
                }
            }
            closedir(dir)
        }
        let mountinfo = readSmallFile("/proc/self/mountinfo") ?? ""
        for line in mountinfo.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 4 else { continue }
            for (major, minor) in devices where fields[2] == "\(major):\(minor)" {
                throw .busy(path: path, reason: "mounted at \(fields[4]) (device \(major):\(minor))")
            }
        }
        for (major, minor) in devices {
            if let count = directoryEntryCount("/sys/dev/block/\(major):\(minor)/holders"), count > 0 {
                throw .busy(path: path, reason: "held by \(count) other driver(s) (device \(major):\(minor), see its holders/)")
            }
        }
    }

    // MARK: Validation

    /// Checks that `[offset, offset+length)` is an aligned, in-range request and that `address`
    /// (when given) is aligned for O_DIRECT.
    @inlinable
    public func validate(offset: UInt64, length: Int, address: UnsafeRawPointer?, write: Bool) throws(IOError) {
        let block = UInt64(logicalBlockSize)
        if write && isReadOnly { throw .readOnly(path: path) }
        guard length > 0, UInt64(length) <= BlockDevice.requestBytesMax else {
            throw .badLength(path: path, length: UInt64(max(length, 0)), maximum: BlockDevice.requestBytesMax)
        }
        guard offset % block == 0 else { throw .misaligned(path: path, what: "offset", value: offset, alignment: block) }
        guard UInt64(length) % block == 0 else {
            throw .misaligned(path: path, what: "length", value: UInt64(length), alignment: block)
        }
        guard offset <= sizeBytes, UInt64(length) <= sizeBytes - offset else {
            throw .outOfRange(path: path, offset: offset, length: UInt64(length), sizeBytes: sizeBytes)
        }
        if let address, UInt64(UInt(bitPattern: address)) % block != 0 {
            throw .misaligned(path: path, what: "buffer address", value: UInt64(UInt(bitPattern: address)), alignment: block)
        }
    }

    // MARK: Synchronous I/O (cold paths)

    /// Reads exactly `buffer.count` bytes at `offset`, looping over short reads and EINTR.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(IOError) {
        try validate(offset: offset, length: buffer.count, address: buffer.baseAddress, write: false)
        var done = 0
        while done < buffer.count {
            let n = pread(fileDescriptor, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw .device(path: path, operation: "read", offset: offset + UInt64(done),
                              length: UInt64(buffer.count - done), errno: errno)
            }
            if n == 0 {
                throw .device(path: path, operation: "read (unexpected end of device)", offset: offset + UInt64(done),
                              length: UInt64(buffer.count - done), errno: EIO)
            }
            done += n
        }
    }

    /// Writes all of `buffer` at `offset`. With `fua`, the write is durable when this returns
    /// (RWF_DSYNC: a FUA write on devices that have it, write + flush otherwise).
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool = false) throws(IOError) {
        try validate(offset: offset, length: buffer.count, address: buffer.baseAddress, write: true)
        var done = 0
        while done < buffer.count {
            var vector = iovec(iov_base: UnsafeMutableRawPointer(mutating: buffer.baseAddress! + done),
                               iov_len: buffer.count - done)
            let n = CShims_pwritev2(fileDescriptor, &vector, 1, off_t(offset) + off_t(done), fua ? CShims_RWF_DSYNC : 0)
            if n < 0 {
                if errno == EINTR { continue }
                throw .device(path: path, operation: fua ? "write (FUA)" : "write", offset: offset + UInt64(done),
                              length: UInt64(buffer.count - done), errno: errno)
            }
            if n == 0 {
                throw .device(path: path, operation: "write (no progress)", offset: offset + UInt64(done),
                              length: UInt64(buffer.count - done), errno: EIO)
            }
            done += n
        }
    }

    /// Makes every completed write durable (fdatasync: a cache flush on block devices).
    public func flush() throws(IOError) {
        if isReadOnly { throw .readOnly(path: path) }
        while fdatasync(fileDescriptor) != 0 {
            if errno == EINTR { continue }
            throw .system(path: path, operation: "fdatasync", errno: errno)
        }
    }

    /// Tells the device the range no longer holds data: BLKDISCARD on block devices, a punched
    /// hole on files. Reads of the range afterwards return zeroes on files and on devices that
    /// guarantee it; callers must not depend on the content.
    public func discard(offset: UInt64, length: UInt64) throws(IOError) {
        if isReadOnly { throw .readOnly(path: path) }
        let block = UInt64(logicalBlockSize)
        guard offset % block == 0 else { throw .misaligned(path: path, what: "discard offset", value: offset, alignment: block) }
        guard length % block == 0, length > 0 else {
            throw .misaligned(path: path, what: "discard length", value: length, alignment: block)
        }
        guard offset <= sizeBytes, length <= sizeBytes - offset else {
            throw .outOfRange(path: path, offset: offset, length: length, sizeBytes: sizeBytes)
        }
        let rc = kind == .blockDevice ? CShims_block_discard(fileDescriptor, offset, length)
                                      : CShims_file_punch_hole(fileDescriptor, offset, length)
        if rc != 0 { throw .system(path: path, operation: kind == .blockDevice ? "BLKDISCARD" : "punch hole", errno: -rc) }
    }
}

// MARK: - small helpers

func readSmallFile(_ path: String) -> String? {
    let fd = Glibc.open(path, O_RDONLY | CShims_O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { _ = close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
    }
    return String(decoding: bytes, as: UTF8.self)
}

func directoryEntryCount(_ path: String) -> Int? {
    guard let dir = opendir(path) else { return nil }
    defer { closedir(dir) }
    var count = 0
    while let entry = readdir(dir) {
        let first = withUnsafeBytes(of: entry.pointee.d_name) { $0[0] }
        if first != UInt8(ascii: ".") { count += 1 }
    }
    return count
}

extension Substring {
    var trimmingSpaces: Substring {
        var s = self
        while let c = s.first, c == " " || c == "\n" { s.removeFirst() }
        while let c = s.last, c == " " || c == "\n" { s.removeLast() }
        return s
    }
}
