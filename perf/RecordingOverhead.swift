// recording-overhead — what RecordingDevice costs on a 1 MiB write stream.
//
//   strata-perf recording-overhead [--size 256M] [--repeats 3] [--dir /tmp] [--smoke]
//
// Writes the same stream of 1 MiB writes (one flush at the end) to one file-backed BlockDevice
// (O_DIRECT, the default OpenOptions) twice per repeat — plain, and through a RecordingDevice
// of a fresh CrashRecorder session over that same device, whose budget holds the whole stream —
// alternating which goes first, and reports the median times, the ratio of the medians and
// the median of the per-repeat ratios recorded/plain (issue 5 aims at ≤ 2×). The recorder
// copies every payload into its arena, so the ratio is memcpy (into fresh, kernel-zeroed
// memory) + bookkeeping against the device's write speed. The temp dir is removed.
//
// Figures (docs/crash-testing.md, "Recording overhead"), 2 shared cores, /work on virtio:
// before the arena (a fresh [UInt8] per write) 2.8-3.9×, after it 1.4-1.8× (2026-11-23).

import ArgumentParser
import Foundation
import StrataIO
import StrataTesting

struct RecordingOverheadBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "recording-overhead",
        abstract: "1 MiB write stream to a file-backed BlockDevice, with and without the crash harness's RecordingDevice."
    )

    @Option(help: "Bytes written per measurement: bytes or 64M, 1G (default 256M; --smoke 16M).")
    var size: String?

    @Option(help: "Measurements per side (default 3; --smoke 1).")
    var repeats: Int?

    @Option(help: "Directory for the temp file (default $TMPDIR or /tmp).")
    var dir: String?

    @Flag(help: "Tiny run for tests: 16 MiB, 1 repeat.")
    var smoke = false

    func run() throws {
        let sizeText = size ?? (smoke ? "16M" : "256M")
        guard let parsed = parseByteCount(sizeText), parsed >= 1 << 20 else {
            throw ValidationError("--size '\(sizeText)' is not a size of at least 1M")
        }
        let streamBytes = parsed / (1 << 20) * (1 << 20)
        let repeatCount = repeats ?? (smoke ? 1 : 3)
        let base = dir ?? ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
        let directory = try makeTempDirectory(base: base)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/recording-overhead.img"
        let device = try BlockDevice.open(path, options: .init(createSizeBytes: streamBytes))
        let buffer = allocateAlignedBuffer(byteCount: 1 << 20)
        defer { buffer.deallocate() }
        for index in 0..<buffer.count { buffer[index] = UInt8(truncatingIfNeeded: index &* 31) }

        func stream(_ target: any BlockStorage) throws -> Double {
            let start = DispatchTime.now().uptimeNanoseconds
            var offset: UInt64 = 0
            while offset < streamBytes {
                try target.write(UnsafeRawBufferPointer(buffer), at: offset, fua: false)
                offset += UInt64(buffer.count)
            }
            try target.flush()
            return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        }

        var plain: [Double] = []
        var recorded: [Double] = []
        var ratios: [Double] = []
        _ = try stream(device)   // warm-up: allocate the file's blocks
        for round in 0..<repeatCount {
            // Interleaved, alternating which side goes first (plain-recorded, recorded-plain, …),
            // so a drift of the disk or of the neighbours' load hits both sides alike.
            let recorder = CrashRecorder(memoryBudgetBytes: Int(streamBytes) + (64 << 20))
            let recording = recorder.record(device, base: device)
            let first = round % 2 == 0
            let a = try stream(first ? device : recording)
            let b = try stream(first ? recording : device)
            let (plainTime, recordedTime) = first ? (a, b) : (b, a)
            plain.append(plainTime)
            recorded.append(recordedTime)
            ratios.append(recordedTime / plainTime)
        }
        func median(_ values: [Double]) -> Double {
            let sorted = values.sorted()
            return sorted.count % 2 == 1 ? sorted[sorted.count / 2]
                                         : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        }
        let plainSeconds = median(plain)
        let recordedSeconds = median(recorded)
        let mib = Double(streamBytes) / Double(1 << 20)
        print("recording-overhead: \(Int(mib)) MiB in 1 MiB writes to \(device.kind.rawValue) \(path), \(repeatCount) interleaved repeats (medians)")
        print(String(format: "  plain     %8.3f s  %8.1f MiB/s  (min %.3f s)", plainSeconds, mib / plainSeconds, plain.min()!))
        print(String(format: "  recorded  %8.3f s  %8.1f MiB/s  (min %.3f s)", recordedSeconds, mib / recordedSeconds, recorded.min()!))
        print(String(format: "  ratio recorded/plain: %.2fx of medians, %.2fx median of pairs (target ≤ 2x)",
                     recordedSeconds / plainSeconds, median(ratios)))
        print("  for reference, before the payload arena (per-write [UInt8] copies, 2026-11-23): 2.8-3.9x, median 3.4x")
    }

    private func parseByteCount(_ text: String) -> UInt64? {
        let upper = text.uppercased().replacingOccurrences(of: "IB", with: "").replacingOccurrences(of: "B", with: "")
        let multipliers: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
        if let last = upper.last, let multiplier = multipliers[last], let value = UInt64(upper.dropLast()) {
            return value * multiplier
        }
        return UInt64(upper)
    }
}
