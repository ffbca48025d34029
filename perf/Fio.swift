// fio: the physical-limit anchor (DESIGN.md "Performance principles"). Runs one workload with
// the same block size, queue depth, pattern and engine kind as the Strata side, and parses
// the numbers out of fio's JSON report.

import Foundation

struct Measurement: Codable, Sendable {
    var mibPerSecond: Double
    var iops: Double
    var p50Microseconds: Double
    var p99Microseconds: Double
    /// Wall time of the measurement, in seconds.
    var seconds: Double
    var ios: UInt64
    /// fio only: completion latency (issue → completion, without submission), and the total
    /// latency (submission + completion, the span the Strata side measures), in µs.
    var fioClatP50Microseconds: Double? = nil
    var fioClatP99Microseconds: Double? = nil
    var fioLatP50Microseconds: Double? = nil
    var fioLatP99Microseconds: Double? = nil
}

/// Which of fio's latencies the table compares with the Strata side's submit→reap latency.
enum FioLatency: String, Codable, Sendable {
    /// lat_ns: from fio preparing the request to seeing its completion (slat + clat). The same
    /// span as Strata's submit→reap, which includes the kernel's submission work.
    case lat
    /// clat_ns: from after the submit system call returned to the completion.
    case clat
}

struct Fio {
    let engine: String            // io_uring or libaio
    let target: String
    let sizeBytes: UInt64
    let scratch: String
    let latency: FioLatency
    /// Add --iodepth_batch_submit=8 --iodepth_batch_complete_max=32 to the 4 KiB QD32 workloads.
    let batching: Bool

    /// Makes sure fio is installed (apt-get install -y fio when missing) and returns its version.
    static func ensureInstalled(scratch: String) throws -> String {
        if findExecutable("fio") == nil {
            progress("strata-perf: fio not found in PATH; installing it: apt-get install -y fio")
            guard geteuid() == 0 else {
                throw PerfError.fio("not installed, and installing it needs root: run `apt-get install -y fio`")
            }
            guard findExecutable("apt-get") != nil else {
                throw PerfError.fio("not installed and apt-get is not available: install fio 3.x by hand")
            }
            var status = try runCommandPassthrough("apt-get", ["install", "-y", "fio"])
            if status != 0 {
                progress("strata-perf: apt-get install failed (status \(status)); running apt-get update and retrying")
                _ = try runCommandPassthrough("apt-get", ["update"])
                status = try runCommandPassthrough("apt-get", ["install", "-y", "fio"])
            }
            guard status == 0, findExecutable("fio") != nil else {
                throw PerfError.fio("installation with apt-get failed (status \(status))")
            }
            progress("strata-perf: fio installed")
        }
        let result = try runCommand("fio", ["--version"], scratch: scratch)
        return result.stdout.trimmingSpacesAndNewlines
    }

    func arguments(for workload: Workload, runtimeSeconds: Double) -> [String] {
        let milliseconds = max(1, Int((runtimeSeconds * 1000).rounded()))
        var args = [
            "--name=\(workload.name)",
            "--filename=\(target)",
            "--ioengine=\(engine)",
            "--direct=1",
            "--time_based",
            "--runtime=\(milliseconds)ms",
            "--ramp_time=0",
            "--norandommap",
            "--randrepeat=0",
            "--group_reporting",
            "--output-format=json",
            "--size=\(sizeBytes)",
            "--bs=\(workload.blockSize)",
            "--iodepth=\(workload.queueDepth)",
            "--rw=\(workload.fioRW)",
            "--lat_percentiles=1",
            // Buffers filled with random bytes once and written as they are, like the Strata side:
            // fio's default per-I/O scrambling makes the data partly compressible, which changes
            // what compressing targets (zram) do.
            "--scramble_buffers=0",
        ]
        if workload.threads > 1 { args.append("--numjobs=\(workload.threads)") }
        if engine == "io_uring" { args += ["--fixedbufs", "--registerfiles"] }
        if batching && workload.fioBatching { args += ["--iodepth_batch_submit=8", "--iodepth_batch_complete_max=32"] }
        return args
    }

    func run(_ workload: Workload, runtimeSeconds: Double) throws -> Measurement {
        let args = arguments(for: workload, runtimeSeconds: runtimeSeconds)
        let result = try runCommand("fio", args, scratch: scratch)
        guard result.succeeded else {
            throw PerfError.fio("exited with status \(result.status) running `fio \(args.joined(separator: " "))`:\n"
                                + (result.stderr.isEmpty ? result.stdout : result.stderr).trimmingSpacesAndNewlines)
        }
        do {
            return try Fio.parse(result.stdout, reading: workload.isRead, latency: latency)
        } catch {
            throw PerfError.fio("\(error) (command: fio \(args.joined(separator: " ")); stderr: \(result.stderr.trimmingSpacesAndNewlines))")
        }
    }

    /// Pulls jobs[0].read or .write out of fio's JSON (fio may print notes before the JSON).
    static func parse(_ output: String, reading: Bool, latency: FioLatency) throws -> Measurement {
        guard let start = output.firstIndex(of: "{") else { throw PerfError.fio("no JSON in fio's output") }
        let data = Data(output[start...].utf8)
        guard let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw PerfError.fio("cannot parse fio's JSON output")
        }
        guard let jobs = root["jobs"] as? [[String: Any]], let job = jobs.first else {
            throw PerfError.fio("fio's JSON has no jobs")
        }
        if let error = number(job["error"]), error != 0 {
            throw PerfError.fio("job reported error \(Int(error))")
        }
        let side = reading ? "read" : "write"
        guard let stats = job[side] as? [String: Any] else { throw PerfError.fio("fio's JSON has no jobs[0].\(side)") }
        guard let bw = number(stats["bw_bytes"]), let iops = number(stats["iops"]) else {
            throw PerfError.fio("jobs[0].\(side) lacks bw_bytes/iops")
        }
        let ios = number(stats["total_ios"]) ?? 0
        let runtimeMs = number(stats["runtime"]) ?? 0
        func percentiles(_ field: String) throws -> (Double, Double)? {
            guard let stats = stats[field] as? [String: Any], let list = stats["percentile"] as? [String: Any] else {
                if ios > 0 { throw PerfError.fio("jobs[0].\(side).\(field).percentile is missing") }
                return nil
            }
            return ((number(list["50.000000"]) ?? 0) / 1000, (number(list["99.000000"]) ?? 0) / 1000)
        }
        let clat = try percentiles("clat_ns")
        let lat = try percentiles("lat_ns")
        let chosen = (latency == .lat ? lat : clat) ?? (0, 0)
        return Measurement(mibPerSecond: bw / 1_048_576, iops: iops, p50Microseconds: chosen.0,
                           p99Microseconds: chosen.1, seconds: runtimeMs / 1000, ios: UInt64(max(0, ios)),
                           fioClatP50Microseconds: clat?.0, fioClatP99Microseconds: clat?.1,
                           fioLatP50Microseconds: lat?.0, fioLatP99Microseconds: lat?.1)
    }

    private static func number(_ value: Any?) -> Double? {
        switch value {
        case let n as NSNumber: return n.doubleValue
        case let d as Double: return d
        case let i as Int: return Double(i)
        case let s as String: return Double(s)
        default: return nil
        }
    }
}

/// One fio run on `path` for `seconds` with `arguments` (direct I/O, JSON out): the anchor the
/// layer benchmarks print next to their own figures.
func runFioAnchor(path: String, scratch: String, seconds: Double, arguments: [String]) throws -> Measurement {
    let args = ["--name=anchor", "--filename=\(path)", "--direct=1", "--time_based", "--runtime=\(max(1, Int(seconds * 1000)))ms",
                "--output-format=json", "--lat_percentiles=1", "--scramble_buffers=0"] + arguments
    let result = try runCommand("fio", args, scratch: scratch)
    guard result.succeeded else { throw PerfError.fio("fio failed: \(result.stderr)") }
    return try Fio.parse(result.stdout, reading: false, latency: .lat)
}
