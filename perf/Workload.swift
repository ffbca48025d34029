// The workloads `strata-perf io` measures, each run identically by fio and by the Strata engine.

import StrataIO

struct Workload: Sendable {
    enum Pattern: String, Sendable, Codable {
        case sequential, random
    }

    let name: String
    let operation: IOOperation            // .read or .write
    let pattern: Pattern
    let blockSize: Int
    /// Requests in flight per thread.
    let queueDepth: Int
    /// Threads, each with its own engine (fio: numjobs).
    let threads: Int
    /// Takes fio's batching options under --fio-batch (4 KiB at QD32). Off by default: on the
    /// development VM they cost fio ~10 % on randread and did nothing for randwrite.
    let fioBatching: Bool

    var isRead: Bool { operation == .read }
    var totalQueueDepth: Int { queueDepth * threads }

    /// fio's --rw value.
    var fioRW: String {
        switch (operation, pattern) {
        case (.read, .sequential): return "read"
        case (.read, .random): return "randread"
        case (_, .sequential): return "write"
        case (_, .random): return "randwrite"
        }
    }

    var blockSizeLabel: String {
        blockSize >= 1 << 20 && blockSize % (1 << 20) == 0 ? "\(blockSize >> 20)M" : "\(blockSize >> 10)k"
    }

    /// The latency ratio is reported where latency, not throughput, is the point (QD1).
    var reportsLatencyRatio: Bool { totalQueueDepth == 1 }

    static let all: [Workload] = [
        Workload(name: "seqwrite", operation: .write, pattern: .sequential, blockSize: 1 << 20, queueDepth: 32,
                 threads: 1, fioBatching: false),
        Workload(name: "seqread", operation: .read, pattern: .sequential, blockSize: 1 << 20, queueDepth: 32,
                 threads: 1, fioBatching: false),
        Workload(name: "randwrite", operation: .write, pattern: .random, blockSize: 4096, queueDepth: 32,
                 threads: 1, fioBatching: true),
        Workload(name: "randread", operation: .read, pattern: .random, blockSize: 4096, queueDepth: 32,
                 threads: 1, fioBatching: true),
        Workload(name: "randwrite-qd1", operation: .write, pattern: .random, blockSize: 4096, queueDepth: 1,
                 threads: 1, fioBatching: false),
        Workload(name: "randwrite-16t", operation: .write, pattern: .random, blockSize: 4096, queueDepth: 2,
                 threads: 16, fioBatching: false),
    ]

    static func named(_ list: String) throws -> [Workload] {
        let names = list.split(separator: ",").map { String($0).trimmingSpacesAndNewlines }.filter { !$0.isEmpty }
        guard !names.isEmpty else { throw PerfError.usage("--workloads: empty list") }
        var chosen: [Workload] = []
        for name in names {
            guard let workload = all.first(where: { $0.name == name }) else {
                throw PerfError.usage("--workloads: unknown workload '\(name)' (known: \(all.map(\.name).joined(separator: ", ")))")
            }
            if !chosen.contains(where: { $0.name == name }) { chosen.append(workload) }
        }
        return chosen
    }
}

extension String {
    var trimmingSpacesAndNewlines: String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\n" || c == "\t" || c == "\r" { s.removeFirst() }
        while let c = s.last, c == " " || c == "\n" || c == "\t" || c == "\r" { s.removeLast() }
        return String(s)
    }
}

enum PerfError: Error, CustomStringConvertible {
    case usage(String)
    case target(String)
    case fio(String)
    case engine(String)
    case tool(String)

    var description: String {
        switch self {
        case .usage(let m): return m
        case .target(let m): return "target: \(m)"
        case .fio(let m): return "fio: \(m)"
        case .engine(let m): return "strata engine: \(m)"
        case .tool(let m): return m
        }
    }
}

/// Parses "1073741824", "1G", "1GiB", "256M", "64m", "512k", "4KiB".
func parseSize(_ text: String) throws -> UInt64 {
    var s = text.trimmingSpacesAndNewlines.lowercased()
    for suffix in ["ib", "b"] where s.hasSuffix(suffix) && s.count > suffix.count {
        s.removeLast(suffix.count)
        break
    }
    var shift: UInt64 = 0
    if let last = s.last {
        switch last {
        case "k": shift = 10
        case "m": shift = 20
        case "g": shift = 30
        case "t": shift = 40
        default: break
        }
        if shift > 0 { s.removeLast() }
    }
    guard let value = UInt64(s), value > 0 else {
        throw PerfError.usage("--size: cannot parse '\(text)' (use bytes or 256M, 1G, 1GiB ...)")
    }
    let (result, overflow) = value.multipliedReportingOverflow(by: 1 << shift)
    guard !overflow else { throw PerfError.usage("--size: '\(text)' is too large") }
    return result
}

func formatBytes(_ bytes: UInt64) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 { return "\(bytes >> 30) GiB" }
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 { return "\(bytes >> 20) MiB" }
    return "\(bytes) B"
}
