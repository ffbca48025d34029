// Targets: what fio and the Strata engine both write to. Everything set up here is undone at
// the end of the run (or on SIGINT/SIGTERM) through `Cleanup`.
//
//   file       a file in a fresh temp dir (removed at the end)            — default
//   loop       a sparse file behind a loop device with direct I/O on      (root)
//   zram       /dev/zram0; disksize set when it is 0 (and reset after)    (root)
//   /dev/XYZ   a named block device, only with --wipe; never when mounted or held

import ArgumentParser
import Foundation
import StrataIO

#if canImport(Glibc)
import Glibc
#endif

struct Target {
    enum Kind: String, Codable { case file, loop, zram, device }
    var kind: Kind
    var path: String
    /// The region [0, sizeBytes) both tools use.
    var sizeBytes: UInt64
    var notes: [String] = []
}

/// Makes a fresh directory `base/strata-perf.XXXXXX`.
func makeTempDirectory(base: String) throws -> String {
    var template = Array((base + "/strata-perf.XXXXXX").utf8CString)
    let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    guard made != nil else {
        throw PerfError.target("cannot create a temp dir in \(base): \(String(cString: strerror(errno)))")
    }
    return String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func removeTree(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}

/// Creates a sparse file of `size` bytes (it is written once by the layout pass).
func createSparseFile(_ path: String, size: UInt64) throws {
    let fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0o600)
    guard fd >= 0 else { throw PerfError.target("cannot create \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    guard ftruncate(fd, off_t(size)) == 0 else {
        throw PerfError.target("cannot size \(path) to \(size) bytes: \(String(cString: strerror(errno)))")
    }
}

/// zram is /dev/zram0; zramN names another zram device (e.g. one made with zram-control/hot_add
/// while zram0 is busy).
func isZramTarget(_ spec: String) -> Bool {
    spec == "zram" || (spec.hasPrefix("zram") && !spec.dropFirst(4).isEmpty && spec.dropFirst(4).allSatisfy(\.isNumber))
}

func prepareTarget(_ spec: String, wipe: Bool, sizeBytes: UInt64, directory: String, scratch: String) throws -> Target {
    switch isZramTarget(spec) ? "zram" : spec {
    case "file":
        var dir = scratch
        if directory != scratch {
            dir = try makeTempDirectory(base: directory)
            let made = dir
            Cleanup.shared.add("remove \(made)") { removeTree(made) }
        }
        let path = dir + "/target.img"
        try createSparseFile(path, size: sizeBytes)
        try checkOpens(path)
        return Target(kind: .file, path: path, sizeBytes: sizeBytes)

    case "loop":
        try requireRoot("--target loop")
        let backing = scratch + "/loop-backing.img"
        try createSparseFile(backing, size: sizeBytes)
        let result = try runCommand("losetup", ["--find", "--show", "--direct-io=on", backing], scratch: scratch, echo: true)
        guard result.succeeded else {
            throw PerfError.target("losetup --find --show --direct-io=on failed (status \(result.status)): \(result.stderr.trimmingSpacesAndNewlines)")
        }
        let device = result.stdout.trimmingSpacesAndNewlines
        guard device.hasPrefix("/dev/") else { throw PerfError.target("losetup printed '\(device)', expected /dev/loopN") }
        Cleanup.shared.add("detach \(device)") {
            let detach = try? runCommand("losetup", ["-d", device], scratch: scratch)
            if detach?.succeeded != true {
                progress("strata-perf: warning: `losetup -d \(device)` failed: \(detach?.stderr ?? "could not run it")")
            } else {
                progress("strata-perf: detached \(device)")
            }
        }
        var notes: [String] = []
        let name = String(device.dropFirst("/dev/".count))
        if let dio = readTextFile("/sys/block/\(name)/loop/dio")?.trimmingSpacesAndNewlines, dio != "1" {
            notes.append("\(device): kernel did not enable direct I/O on the loop device (loop/dio=\(dio))")
        }
        try checkOpens(device)
        return Target(kind: .loop, path: device, sizeBytes: sizeBytes, notes: notes)

    case "zram":
        try requireRoot("--target zram")
        let name = spec == "zram" ? "zram0" : spec
        let device = "/dev/\(name)"
        let sys = "/sys/block/\(name)"
        guard FileManager.default.fileExists(atPath: device), FileManager.default.fileExists(atPath: sys) else {
            throw PerfError.target("\(device) does not exist (load the module: modprobe zram)")
        }
        if let swaps = readTextFile("/proc/swaps"),
           swaps.split(separator: "\n").dropFirst().contains(where: { $0.split(separator: " ").first.map(String.init) == device }) {
            throw PerfError.target("\(device) is in use as swap (/proc/swaps); refusing to write to it")
        }
        try refuseIfMounted(device: device, sysName: name)
        var size = sizeBytes
        var notes: [String] = []
        let current = UInt64(readTextFile(sys + "/disksize")?.trimmingSpacesAndNewlines ?? "") ?? 0
        if current == 0 {
            progress("strata-perf: + echo \(sizeBytes) > \(sys)/disksize")
            try writeSysfs(sys + "/disksize", "\(sizeBytes)")
            Cleanup.shared.add("reset \(name)") {
                // EBUSY for a moment after the last close is normal: io_uring tears rings down
                // in a kernel worker, and a ring's registered files keep the device open until then.
                var lastError: Error? = nil
                for _ in 0..<100 {
                    do {
                        try writeSysfs(sys + "/reset", "1")
                        progress("strata-perf: reset \(device) (disksize back to 0)")
                        return
                    } catch {
                        lastError = error
                        usleep(100_000)
                    }
                }
                progress("strata-perf: warning: could not reset \(device): \(lastError.map { "\($0)" } ?? "?")")
            }
        } else {
            notes.append("\(device) already had disksize \(current); left as it was")
            if current < size {
                size = current / (1 << 20) * (1 << 20)
                notes.append("size clamped to the device: \(formatBytes(size))")
            }
        }
        if let algorithm = readTextFile(sys + "/comp_algorithm")?.trimmingSpacesAndNewlines {
            notes.append("zram comp_algorithm: \(algorithm)")
        }
        try checkOpens(device)
        return Target(kind: .zram, path: device, sizeBytes: size, notes: notes)

    default:
        guard spec.hasPrefix("/dev/") else {
            throw PerfError.usage("--target must be file, loop, zram or a block device path /dev/XYZ (got '\(spec)')")
        }
        var info = stat()
        guard stat(spec, &info) == 0 else {
            throw PerfError.target("\(spec): \(String(cString: strerror(errno)))")
        }
        guard info.st_mode & S_IFMT == S_IFBLK else { throw PerfError.target("\(spec) is not a block device") }
        guard wipe else {
            throw PerfError.target("\(spec): refusing to overwrite a block device without --wipe (all data on it in the first \(formatBytes(sizeBytes)) is destroyed)")
        }
        // BlockDevice.open refuses mounted (also through a partition) and held devices.
        let device: BlockDevice
        do { device = try BlockDevice.open(spec) } catch { throw PerfError.target("\(error)") }
        var size = sizeBytes
        var notes: [String] = []
        if device.sizeBytes < size {
            size = device.sizeBytes / (1 << 20) * (1 << 20)
            notes.append("size clamped to the device: \(formatBytes(size))")
        }
        let name = URL(fileURLWithPath: spec).resolvingSymlinksInPath().lastPathComponent
        for attribute in ["queue/rotational", "queue/write_cache", "queue/fua"] {
            if let value = readTextFile("/sys/class/block/\(name)/\(attribute)")?.trimmingSpacesAndNewlines {
                notes.append("\(attribute)=\(value)")
            }
        }
        return Target(kind: .device, path: spec, sizeBytes: size, notes: notes)
    }
}

private func requireRoot(_ what: String) throws {
    guard geteuid() == 0 else { throw PerfError.target("\(what) needs root") }
}

/// Opens the target once through StrataIO (O_DIRECT; O_EXCL + mounted/held checks for devices).
private func checkOpens(_ path: String) throws {
    do { _ = try BlockDevice.open(path) } catch { throw PerfError.target("\(error)") }
}

private func refuseIfMounted(device: String, sysName: String) throws {
    guard let dev = readTextFile("/sys/block/\(sysName)/dev")?.trimmingSpacesAndNewlines else { return }
    let mountinfo = readTextFile("/proc/self/mountinfo") ?? ""
    for line in mountinfo.split(separator: "\n") {
        let fields = line.split(separator: " ")
        if fields.count > 4, fields[2] == dev {
            throw PerfError.target("\(device) is mounted at \(fields[4]); refusing to write to it")
        }
    }
}

/// The one-device target of the log and object-store benchmarks: `file` is a sparse file of
/// `sizeBytes` in a fresh directory under `dir` (removed by `remove()`), `zram`/`zramN` the zram
/// device (sized now if it has no size; `Cleanup` resets it).
struct SingleDeviceTarget {
    let path: String
    let isFile: Bool
    private let directory: String?

    init(spec: String, dir: String, sizeBytes: UInt64, fileName: String, scratch: String) throws {
        if spec == "file" {
            let made = try makeTempDirectory(base: dir)
            directory = made
            path = made + "/" + fileName
            isFile = true
            try createSparseFile(path, size: sizeBytes)
        } else if isZramTarget(spec) {
            directory = nil
            path = try prepareTarget(spec, wipe: false, sizeBytes: sizeBytes, directory: scratch, scratch: scratch).path
            isFile = false
        } else {
            throw PerfError.target("--target must be file, zram or zramN, not \(spec)")
        }
    }

    func remove() {
        if let directory { removeTree(directory) }
    }
}

/// The options of the benchmarks that run on one device, a file or zram (`strata-perf log` and
/// `strata-perf dmu`); each benchmark gives its own default size.
struct SingleDeviceOptions: ParsableArguments {
    @Option(help: "file (a file in --dir) or zram (/dev/zram0, overwritten; zramN for /dev/zramN).")
    var target: String = "file"
    @Option(help: "Directory for the file target (must support O_DIRECT; default: current directory).")
    var dir: String = "."
    @Option(help: "Target size (default: log 4G, dmu 32G; --smoke: 256M, 1G).")
    var size: String?
    @Option(help: "Seconds per measurement (default 3; --smoke 0.3).")
    var seconds: Double?
    @Option(help: "Comma-separated thread counts (default 1,16).")
    var threads: String = "1,16"
    @Flag(help: "Tiny sizes and short runs: checks that the benchmark works.")
    var smoke = false

    /// The size (this benchmark's default, or its smoke size), seconds per run and thread counts.
    func resolved(sizeDefault: UInt64, smokeSize: UInt64) throws -> (sizeBytes: UInt64, runSeconds: Double, threadCounts: [Int]) {
        (try size.map(parseSize) ?? (smoke ? smokeSize : sizeDefault), seconds ?? (smoke ? 0.3 : 3),
         threads.split(separator: ",").compactMap { Int($0) })
    }

    /// Opens (a file target: creating it at `sizeBytes`) the target's device.
    func openDevice(_ path: String, sizeBytes: UInt64) throws -> BlockDevice {
        try BlockDevice.open(path, options: .init(createSizeBytes: isZramTarget(target) ? nil : sizeBytes))
    }
}
