// Results: medians, the table on stdout and the JSON file.

import Foundation

struct SideReport: Codable {
    var repeats: [Measurement] = []
    var median: Measurement? = nil
}

struct WorkloadReport: Codable {
    var name: String
    var rw: String
    var blockSize: Int
    var queueDepth: Int
    var threads: Int
    var totalQueueDepth: Int
    var fioCommand: [String]
    var fio = SideReport()
    var strata = SideReport()
    /// Engine counters over the Strata repeats, per completed I/O: io_uring_enter/io_submit
    /// calls, kernel requests (above 1: short transfers resubmitted), EINTR/EAGAIN retries.
    var strataSubmitSyscallsPerIO: Double? = nil
    var strataKernelRequestsPerIO: Double? = nil
    var strataShortTransfers: UInt64 = 0
    var strataRetries: UInt64 = 0
    var strataRegisteredBuffers: Bool? = nil
    /// strata / fio, from the medians.
    var throughputRatio: Double? = nil
    /// strata / fio p50 latency, from the medians (QD1 only).
    var p50LatencyRatio: Double? = nil
    /// strata p50 / fio clat p50 (QD1 only; for reference when the table compares with lat).
    var p50ClatRatio: Double? = nil
    /// strata / fio for each repeat pair.
    var throughputRatioPerRepeat: [Double] = []
}

struct RunReport: Codable {
    struct TargetInfo: Codable {
        var kind: String
        var path: String
        var sizeBytes: UInt64
        var notes: [String]
    }

    var tool = "strata-perf io"
    var date: String
    var kernel: String
    var cpus: Int
    var engine: String
    var fioVersion: String
    /// io_uring only: whether the Strata engine ran with registered (fixed) buffers.
    var registeredBuffers: Bool?
    var target: TargetInfo
    var runtimeSeconds: Double
    var repeats: Int
    /// Which fio latency the fio p50/p99 fields hold (the clat and lat values are both kept).
    var fioLatency: FioLatency
    /// How the Strata side resubmitted: "batch" (one system call per reap) or "each".
    var strataSubmit: String
    /// The one sequential 1 MiB write pass that lays out the target before the measurements.
    var layout: Measurement?
    var workloads: [WorkloadReport] = []
}

func median(_ values: [Double]) -> Double {
    guard !values.isEmpty else { return 0 }
    let sorted = values.sorted()
    let mid = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/// The median of each field separately.
func medianMeasurement(_ list: [Measurement]) -> Measurement? {
    guard !list.isEmpty else { return nil }
    return Measurement(mibPerSecond: median(list.map(\.mibPerSecond)), iops: median(list.map(\.iops)),
                       p50Microseconds: median(list.map(\.p50Microseconds)),
                       p99Microseconds: median(list.map(\.p99Microseconds)),
                       seconds: median(list.map(\.seconds)), ios: UInt64(median(list.map { Double($0.ios) })),
                       fioClatP50Microseconds: optionalMedian(list.map(\.fioClatP50Microseconds)),
                       fioClatP99Microseconds: optionalMedian(list.map(\.fioClatP99Microseconds)),
                       fioLatP50Microseconds: optionalMedian(list.map(\.fioLatP50Microseconds)),
                       fioLatP99Microseconds: optionalMedian(list.map(\.fioLatP99Microseconds)))
}

func optionalMedian(_ values: [Double?]) -> Double? {
    let present = values.compactMap { $0 }
    return present.isEmpty ? nil : median(present)
}

func fixed(_ value: Double, _ digits: Int) -> String {
    String(format: "%.\(digits)f", value)
}

func pad(_ s: String, _ width: Int, left: Bool = false) -> String {
    let count = s.count
    if count >= width { return s }
    let fill = String(repeating: " ", count: width - count)
    return left ? s + fill : fill + s
}

func describe(_ m: Measurement) -> String {
    "\(fixed(m.mibPerSecond, 1)) MiB/s  \(fixed(m.iops, 0)) IOPS  p50 \(fixed(m.p50Microseconds, 1)) µs  p99 \(fixed(m.p99Microseconds, 1)) µs"
}

func renderTable(_ report: RunReport) -> String {
    var lines: [String] = []
    let head1 = pad("", 15, left: true) + pad("", 10, left: true) + pad("", 4) + pad("", 6)
        + "  │" + pad("fio", 38) + "  │" + pad("strata", 38) + "  │ strata/fio"
    let head2 = pad("workload", 15, left: true) + pad("rw", 10, left: true) + pad("bs", 4) + pad("QD", 6)
        + "  │" + pad("MiB/s", 9) + pad("IOPS", 9) + pad("p50 µs", 10) + pad("p99 µs", 10)
        + "  │" + pad("MiB/s", 9) + pad("IOPS", 9) + pad("p50 µs", 10) + pad("p99 µs", 10)
        + "  │" + pad("tput", 6) + pad("p50", 7)
    lines.append(head1)
    lines.append(head2)
    lines.append(String(repeating: "─", count: head2.count))
    for w in report.workloads {
        let qd = w.threads > 1 ? "\(w.threads)x\(w.queueDepth)" : "\(w.queueDepth)"
        var line = pad(w.name, 15, left: true) + pad(w.rw, 10, left: true)
            + pad(w.blockSize >= 1 << 20 ? "\(w.blockSize >> 20)M" : "\(w.blockSize >> 10)k", 4) + pad(qd, 6)
        for side in [w.fio.median, w.strata.median] {
            line += "  │"
            if let m = side {
                line += pad(fixed(m.mibPerSecond, 1), 9) + pad(fixed(m.iops, 0), 9)
                    + pad(fixed(m.p50Microseconds, 1), 10) + pad(fixed(m.p99Microseconds, 1), 10)
            } else {
                line += pad("-", 9) + pad("-", 9) + pad("-", 10) + pad("-", 10)
            }
        }
        line += "  │" + pad(w.throughputRatio.map { fixed($0, 2) + "x" } ?? "-", 6)
        line += pad(w.p50LatencyRatio.map { fixed($0, 2) + "x" } ?? "", 7)
        lines.append(line)
    }
    return lines.joined(separator: "\n")
}

func writeJSON(_ report: RunReport, to path: String) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    let data = try encoder.encode(report)
    do {
        try data.write(to: URL(fileURLWithPath: path))
    } catch {
        throw PerfError.tool("cannot write JSON to \(path): \(error.localizedDescription)")
    }
}
