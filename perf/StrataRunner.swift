// The Strata side of each measurement: the StrataIO engine driven at a constant queue depth.
//
// Hot loop. `queueDepth` buffers are allocated from an AlignedBufferPool before the clock
// starts and live in a fixed stash indexed by request tag. The loop submits QD requests, then
// repeatedly reaps at least one completion, records each completion's latency into a
// preallocated histogram, parks the returned buffer back in the stash, and resubmits every
// parked buffer with a new offset. Nothing in the loop allocates, formats a string or grows a
// collection; the loop is generic over the concrete engine class (the existential is opened
// once, and URingEngine/AIOEngine are named so the compiler specializes for them).
//
// Latency is measured from `submit` (the request enters the engine) to the moment `reap` hands
// the completion back, with CLOCK_MONOTONIC: one clock read per resubmitted batch and one per
// reaped batch (completions that arrive in the same reap were harvested together).
//
// Threads. The thread-model workload starts N threads; each opens its own engine and pool on
// its own thread (the ring is SINGLE_ISSUER), they meet at a barrier, and all run until the
// same runtime has passed. Their histograms are merged afterwards.

import StrataIO

#if canImport(Glibc)
import Glibc
#endif

struct LoopParameters {
    var operation: IOOperation
    var pattern: Workload.Pattern
    var blockSize: Int
    var queueDepth: Int
    var regionBytes: UInt64
    /// Stop submitting after this many nanoseconds of measurement (UInt64.max: no limit).
    var runtimeNanoseconds: UInt64 = .max
    /// Stop submitting after this many requests (UInt64.max: no limit).
    var requestLimit: UInt64 = .max
    var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
    /// Push each request to the kernel at once (the engine's default `submitBatch` = 1, as fio
    /// at its default iodepth_batch_submit=1) instead of letting the next `reap` send the whole
    /// batch in one io_uring_enter/io_submit (`submitBatch` = queue depth).
    var submitEach = true
}

extension LoopParameters {
    var engineConfiguration: IOEngineConfiguration {
        var configuration = IOEngineConfiguration(queueDepth: queueDepth)
        configuration.submitBatch = submitEach ? 1 : queueDepth
        return configuration
    }
}

struct LoopResult {
    var ios: UInt64 = 0
    var bytes: UInt64 = 0
    var seconds: Double = 0
    var registeredBuffers = false
    var kernelSubmissions: UInt64 = 0
    var submitSyscalls: UInt64 = 0
    var shortTransfersResubmitted: UInt64 = 0
    var retries: UInt64 = 0

    mutating func take(_ stats: IOEngineStatistics) {
        kernelSubmissions = stats.kernelSubmissions
        submitSyscalls = stats.submitSyscalls
        shortTransfersResubmitted = stats.shortTransfersResubmitted
        retries = stats.retriesAfterEINTRorEAGAIN
    }

    mutating func add(_ other: LoopResult) {
        ios += other.ios
        bytes += other.bytes
        seconds = max(seconds, other.seconds)
        kernelSubmissions += other.kernelSubmissions
        submitSyscalls += other.submitSyscalls
        shortTransfersResubmitted += other.shortTransfersResubmitted
        retries += other.retries
    }

    func measurement(_ histogram: LatencyHistogram) -> Measurement {
        let s = max(seconds, 1e-9)
        return Measurement(mibPerSecond: Double(bytes) / s / 1_048_576, iops: Double(ios) / s,
                           p50Microseconds: histogram.percentile(0.50) / 1000,
                           p99Microseconds: histogram.percentile(0.99) / 1000,
                           seconds: seconds, ios: ios)
    }
}

/// xorshift64* — a few instructions, no allocation.
struct FastRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed == 0 ? 0x2545_F491_4F6C_DD1D : seed }
    @inline(__always)
    mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }
    /// Uniform in 0..<bound (multiply-high, no division).
    @inline(__always)
    mutating func next(below bound: UInt64) -> UInt64 {
        next().multipliedFullWidth(by: bound).high
    }
}

enum StrataRunner {
    static func engineChoice(_ kind: IOEngineKind) -> IOEngineChoice {
        kind == .ioUring ? .ioUring : .libaio
    }

    static func poolBudget(blockSize: Int, queueDepth: Int) -> Int {
        let slab = AlignedBufferPool.slabBytes
        let bytes = max(blockSize * queueDepth, slab)
        return (bytes + slab - 1) / slab * slab
    }

    /// One engine, one pool, one loop, on the calling thread.
    static func run(device: BlockDevice, kind: IOEngineKind, parameters: LoopParameters,
                    histogram: LatencyHistogram) throws -> LoopResult {
        let pool: AlignedBufferPool
        let engine: any IOEngine
        do {
            pool = try AlignedBufferPool(budgetBytes: poolBudget(blockSize: parameters.blockSize,
                                                                queueDepth: parameters.queueDepth))
            engine = try IOEngineFactory.makeEngine(devices: [device], choice: engineChoice(kind),
                                                    configuration: parameters.engineConfiguration)
        } catch {
            throw PerfError.engine("cannot set up the \(kind.rawValue) engine on \(device.path): \(error)")
        }
        guard engine.kind == kind else {
            throw PerfError.engine("asked for \(kind.rawValue), the factory made \(engine.kind.rawValue)")
        }
        engine.register(pool)
        var result: LoopResult
        // Name the concrete engines so the loop is specialized for them; open the existential
        // once for anything else.
        if let uring = engine as? URingEngine {
            result = try loop(uring, pool: pool, parameters: parameters, histogram: histogram)
        } else if let aio = engine as? AIOEngine {
            result = try loop(aio, pool: pool, parameters: parameters, histogram: histogram)
        } else {
            result = try loop(engine, pool: pool, parameters: parameters, histogram: histogram)
        }
        result.registeredBuffers = engine.usesRegisteredBuffers(of: pool)
        result.take(engine.statistics)
        return result
    }

    /// Fills a buffer with pseudo-random bytes (so compressing targets such as zram see real data).
    static func scramble(_ bytes: UnsafeMutableRawBufferPointer, seed: UInt64) {
        var random = FastRandom(seed: seed)
        let words = bytes.count / 8
        let base = bytes.baseAddress!
        for i in 0..<words { base.storeBytes(of: random.next(), toByteOffset: i * 8, as: UInt64.self) }
    }

    static func loop<E: IOEngine>(_ engine: E, pool: AlignedBufferPool, parameters p: LoopParameters,
                                  histogram: LatencyHistogram) throws -> LoopResult {
        let depth = p.queueDepth
        let blockSize = UInt64(p.blockSize)
        let operation = p.operation
        let blocks = p.regionBytes / blockSize
        guard blocks > 0 else { throw PerfError.engine("region of \(p.regionBytes) bytes holds no \(blockSize)-byte block") }

        // Everything the loop touches, allocated before the clock starts.
        let stash = UnsafeMutablePointer<IOBuffer?>.allocate(capacity: depth)
        let submitTimes = UnsafeMutablePointer<UInt64>.allocate(capacity: depth)
        let ready = UnsafeMutablePointer<Int32>.allocate(capacity: depth)
        submitTimes.initialize(repeating: 0, count: depth)
        ready.initialize(repeating: 0, count: depth)
        for i in 0..<depth { (stash + i).initialize(to: nil) }
        defer {
            stash.deinitialize(count: depth)       // buffers go back to the pool
            stash.deallocate()
            submitTimes.deallocate()
            ready.deallocate()
        }
        for i in 0..<depth {
            let buffer: IOBuffer
            do { buffer = try pool.allocate(byteCount: p.blockSize) } catch {
                throw PerfError.engine("buffer pool: \(error)")
            }
            if operation.isWrite { scramble(buffer.bytes, seed: p.seed &+ UInt64(i) &* 0x1000_0001) }
            stash[i] = consume buffer
        }

        var random = FastRandom(seed: p.seed)
        var sequentialNext: UInt64 = 0
        let sequential = p.pattern == .sequential

        var submitted: UInt64 = 0
        var inFlight = 0
        var ios: UInt64 = 0
        var bytes: UInt64 = 0
        var failedErrno: Int32 = 0
        var failedOffset: UInt64 = 0
        var failedTag: UInt64 = 0
        var stopping = false

        let start = monotonicNanoseconds()
        let deadline = p.runtimeNanoseconds == .max ? UInt64.max : start &+ p.runtimeNanoseconds
        var end = start

        /// The next request's offset: sequential with wrap-around, or uniformly random.
        func nextOffset() -> UInt64 {
            if !sequential { return random.next(below: blocks) * blockSize }
            let offset = sequentialNext * blockSize
            sequentialNext += 1
            if sequentialNext == blocks { sequentialNext = 0 }
            return offset
        }

        do {
            for tag in 0..<depth where submitted < p.requestLimit {
                let offset = nextOffset()
                submitTimes[tag] = start
                try engine.submit(operation, deviceIndex: 0, offset: offset, buffer: stash[tag].take(), tag: UInt64(tag))
                submitted += 1
                inFlight += 1
            }

            while inFlight > 0 {
                var readyCount = 0
                var reapTime: UInt64 = 0
                try engine.reap(minimum: 1) { completion, buffer in
                    if reapTime == 0 { reapTime = monotonicNanoseconds() }
                    let tag = Int(truncatingIfNeeded: completion.tag)
                    stash[tag] = buffer
                    inFlight -= 1
                    if completion.errno != 0 {
                        if failedErrno == 0 {
                            failedErrno = completion.errno
                            failedOffset = completion.offset
                            failedTag = completion.tag
                        }
                        return
                    }
                    if !stopping {
                        histogram.record(reapTime &- submitTimes[tag])
                        ios &+= 1
                        bytes &+= UInt64(completion.length)
                        ready[readyCount] = Int32(truncatingIfNeeded: tag)
                        readyCount += 1
                    }
                }
                if stopping { continue }
                if reapTime != 0 { end = reapTime }
                if failedErrno != 0 || reapTime >= deadline {
                    stopping = true
                    continue
                }
                if readyCount == 0 { continue }
                let now = monotonicNanoseconds()
                for k in 0..<readyCount {
                    if submitted >= p.requestLimit { break }
                    let tag = Int(ready[k])
                    let offset = nextOffset()
                    submitTimes[tag] = now
                    try engine.submit(operation, deviceIndex: 0, offset: offset, buffer: stash[tag].take(), tag: UInt64(tag))
                    submitted += 1
                    inFlight += 1
                }
            }
        } catch {
            throw PerfError.engine("\(error)")
        }
        if failedErrno != 0 {
            throw PerfError.engine("\(operation) of \(blockSize) bytes at offset \(failedOffset) (tag \(failedTag)) completed with \(IOError.errnoName(failedErrno))")
        }
        return LoopResult(ios: ios, bytes: bytes, seconds: Double(end &- start) / 1e9)
    }
}

// MARK: - Threads, each with its own engine

private final class WorkerContext: @unchecked Sendable {
    let device: BlockDevice
    let kind: IOEngineKind
    var parameters: LoopParameters
    let barrier: UnsafeMutablePointer<pthread_barrier_t>
    let histogram = LatencyHistogram()
    var result = LoopResult()
    var error: String? = nil
    var setupFailed = false

    init(device: BlockDevice, kind: IOEngineKind, parameters: LoopParameters,
         barrier: UnsafeMutablePointer<pthread_barrier_t>) {
        self.device = device
        self.kind = kind
        self.parameters = parameters
        self.barrier = barrier
    }

    func main() {
        // Set up on this thread (the ring belongs to its creator), then wait for the others.
        let pool: AlignedBufferPool
        let engine: any IOEngine
        do {
            pool = try AlignedBufferPool(budgetBytes: StrataRunner.poolBudget(blockSize: parameters.blockSize,
                                                                              queueDepth: parameters.queueDepth))
            engine = try IOEngineFactory.makeEngine(devices: [device], choice: StrataRunner.engineChoice(kind),
                                                    configuration: parameters.engineConfiguration)
            engine.register(pool)
        } catch {
            self.error = "cannot set up the \(kind.rawValue) engine: \(error)"
            setupFailed = true
            pthread_barrier_wait(barrier)
            return
        }
        pthread_barrier_wait(barrier)
        do {
            if let uring = engine as? URingEngine {
                result = try StrataRunner.loop(uring, pool: pool, parameters: parameters, histogram: histogram)
            } else if let aio = engine as? AIOEngine {
                result = try StrataRunner.loop(aio, pool: pool, parameters: parameters, histogram: histogram)
            } else {
                result = try StrataRunner.loop(engine, pool: pool, parameters: parameters, histogram: histogram)
            }
            result.registeredBuffers = engine.usesRegisteredBuffers(of: pool)
            result.take(engine.statistics)
        } catch {
            self.error = "\(error)"
        }
    }
}

extension StrataRunner {
    /// `threads` threads, each with its own engine and pool, at `parameters.queueDepth` each.
    /// Returns the combined result (bytes and I/Os summed, time = the longest thread) and fills
    /// `histogram` with every thread's latencies.
    static func runThreads(_ threads: Int, device: BlockDevice, kind: IOEngineKind, parameters: LoopParameters,
                           histogram: LatencyHistogram) throws -> (LoopResult, registeredThreads: Int) {
        let barrier = UnsafeMutablePointer<pthread_barrier_t>.allocate(capacity: 1)
        pthread_barrier_init(barrier, nil, UInt32(threads))
        defer {
            pthread_barrier_destroy(barrier)
            barrier.deallocate()
        }
        var contexts: [WorkerContext] = []
        var handles: [pthread_t] = []
        for index in 0..<threads {
            var p = parameters
            p.seed = parameters.seed &+ UInt64(index + 1) &* 0xA24B_AED4_963E_E407
            let context = WorkerContext(device: device, kind: kind, parameters: p, barrier: barrier)
            contexts.append(context)
            var handle = pthread_t()
            let unmanaged = Unmanaged.passRetained(context)
            let rc = pthread_create(&handle, nil, { raw in
                let context = Unmanaged<WorkerContext>.fromOpaque(raw!).takeRetainedValue()
                context.main()
                return nil
            }, unmanaged.toOpaque())
            guard rc == 0 else {
                unmanaged.release()
                // Threads already started wait at the barrier forever; nothing sane to do but stop.
                fatalError("pthread_create failed: \(IOError.errnoName(rc))")
            }
            handles.append(handle)
        }
        for handle in handles { pthread_join(handle, nil) }
        if let failure = contexts.first(where: { $0.error != nil }) {
            throw PerfError.engine(failure.error!)
        }
        var total = LoopResult()
        var registered = 0
        for context in contexts {
            total.add(context.result)
            if context.result.registeredBuffers { registered += 1 }
            histogram.merge(context.histogram)
        }
        total.registeredBuffers = registered == threads
        return (total, registered)
    }
}
