// recording-overhead — what RecordingDevice costs on a 1 MiB write stream.
//
//   strata-perf recording-overhead [--size 256M] [--repeats 3] [--dir /tmp] [--smoke]
//
// Writes the same stream of 1 MiB O_DIRECT writes (one flush at the end) to a file-backed
// BlockDevice twice per repeat — plain, then through a RecordingDevice of a CrashRecorder
// session whose budget holds the whole stream — and reports the median times and the ratio
// recorded/plain (issue 5 aims at ≤ 2×). The recorder copies every payload into memory, so the
// ratio is memcpy + bookkeeping against the device's write speed. The temp dir is removed.

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
        _ = try stream(device)   // warm-up: allocate the file's blocks
        for _ in 0..<repeatCount {
            plain.append(try stream(device))
            let recorder = CrashRecorder(memoryBudgetBytes: Int(streamBytes) + (64 << 20))
            recorded.append(try stream(recorder.record(device, base: device)))
        }
        let plainSeconds = plain.sorted()[plain.count / 2]
        let recordedSeconds = recorded.sorted()[recorded.count / 2]
        let mib = Double(streamBytes) / Double(1 << 20)
        print("recording-overhead: \(Int(mib)) MiB in 1 MiB writes to \(device.kind.rawValue) \(path), \(repeatCount) repeats (medians)")
        print(String(format: "  plain     %8.3f s  %8.1f MiB/s", plainSeconds, mib / plainSeconds))
        print(String(format: "  recorded  %8.3f s  %8.1f MiB/s", recordedSeconds, mib / recordedSeconds))
        print(String(format: "  ratio recorded/plain: %.2fx (target ≤ 2x)", recordedSeconds / plainSeconds))
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
