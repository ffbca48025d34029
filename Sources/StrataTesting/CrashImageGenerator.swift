// CrashImageGenerator — chooses which crash images of a recording to check.
//
// Theory. The crash model allows, at each crash point, any subset of the pending writes, each
// possibly torn: far too many states to check them all, so the generator picks three families
// (part A of the reference notes):
//
//   1. **Boundaries** (dm-log-writes / generic/482): at every flush or FUA completion, the image
//      holding exactly the durable writes. This is the state a correct system must always
//      recover from, and the one that catches "acknowledged before durable".
//   2. **Exhaustive** (ACE / CrashMonkey in-order + permutations): just before each boundary —
//      where the pending set and the acknowledgement log are largest in the epoch — every
//      combination of the pending writes (absent, whole, or torn: every proper subset of units
//      for writes of 2–3 units, first or second half for longer ones), while the number of
//      combinations is at most `exhaustiveImagesMax`. Otherwise only "all lost" and "all kept".
//   3. **Random** (CrashMonkey's permuter): `randomImagesPerEpoch` images per epoch at random
//      crash points inside it, each pending write kept with `keepProbability` and torn with
//      `tearProbability`, from a stream seeded by (seed, epoch).
//
// Images are deduplicated: two images with the same durable set, the same kept writes, and
// the same numbers of issued and acknowledged operations are the same test. The result is
// sorted by crash point (the materialiser's cursor moves forward) and is a pure function of
// (recording, options, seed): an image index plus the seed names an image for replay.

/// Picks crash images of a recording: every boundary, exhaustive combinations while small,
/// and seeded random ones.
public struct CrashImageGenerator: Sendable {
    public struct Options: Sendable {
        /// Random images per epoch (between two durability boundaries).
        public var randomImagesPerEpoch: Int
        /// Chance that a random image keeps a given pending write.
        public var keepProbability: Double
        /// Chance that a kept write of more than one 4 KiB unit is torn.
        public var tearProbability: Double
        /// Enumerate every combination of pending writes when there are at most this many.
        public var exhaustiveImagesMax: Int

        public init(randomImagesPerEpoch: Int = 4, keepProbability: Double = 0.5, tearProbability: Double = 0.3,
                    exhaustiveImagesMax: Int = 64) {
            precondition(randomImagesPerEpoch >= 0 && exhaustiveImagesMax >= 0, "negative image counts")
            self.randomImagesPerEpoch = randomImagesPerEpoch
            self.keepProbability = keepProbability
            self.tearProbability = tearProbability
            self.exhaustiveImagesMax = exhaustiveImagesMax
        }
    }

    public let options: Options

    public init(options: Options = Options()) {
        self.options = options
    }

    private struct Fingerprint: Hashable {
        let durableCount: Int
        let operationsIssued: Int
        let operationsAcknowledged: Int
        let persisted: [CrashImage.PersistedWrite]
    }

    /// The images of `recording` for `seed`, sorted by crash point.
    public func images(for recording: Recording, seed: UInt64) -> [CrashImage] {
        let durableSequences = recording.writes.compactMap(\.durableSequence).sorted()
        func durableCount(at sequence: UInt64) -> Int {
            var low = 0, high = durableSequences.count
            while low < high {
                let middle = (low + high) / 2
                if durableSequences[middle] <= sequence { low = middle + 1 } else { high = middle }
            }
            return low
        }
        var seen: Set<Fingerprint> = []
        var images: [CrashImage] = []
        func add(_ image: CrashImage) {
            let persisted = image.persisted.sorted { $0.writeIndex < $1.writeIndex }
            let fingerprint = Fingerprint(durableCount: durableCount(at: image.crashPoint),
                                          operationsIssued: recording.operationsIssued(at: image.crashPoint),
                                          operationsAcknowledged: recording.operationsAcknowledged(at: image.crashPoint),
                                          persisted: persisted)
            if seen.insert(fingerprint).inserted { images.append(image) }
        }

        var boundaries = recording.durabilityBoundaries
        if boundaries.last != recording.endSequence { boundaries.append(recording.endSequence) }
        var epochStart: UInt64 = 0
        for (epoch, boundary) in boundaries.enumerated() {
            let isEnd = boundary == recording.endSequence && !durableSequences.contains(boundary)
            if !isEnd { add(CrashImage(crashPoint: boundary, kind: .boundary)) }
            // The last crash point before the boundary (or the end itself).
            let latest = isEnd ? boundary : boundary - 1
            if latest > epochStart || (isEnd && latest >= epochStart) {
                addExhaustive(recording: recording, crashPoint: latest, add: add)
            }
            if latest > epochStart {
                var random = SeededRandom(seed: seed, stream: UInt64(epoch))
                for _ in 0..<options.randomImagesPerEpoch {
                    let crashPoint = epochStart + 1 + random.next() % (latest - epochStart)
                    add(randomImage(recording: recording, crashPoint: crashPoint, random: &random))
                }
            }
            epochStart = boundary
        }
        // Stable sort by crash point: the materialiser's cursor only moves forward.
        return images.enumerated().sorted { ($0.element.crashPoint, $0.offset) < ($1.element.crashPoint, $1.offset) }
            .map(\.element)
    }

    /// The ways one pending write can end up: absent (`nil`), whole, or torn.
    private func outcomes(of write: RecordedWrite) -> [CrashImage.PersistedWrite?] {
        var result: [CrashImage.PersistedWrite?] = [nil, CrashImage.PersistedWrite(writeIndex: write.index)]
        let units = CrashImage.tearUnitCount(offset: write.offset, length: write.length)
        if units == 2 || units == 3 {
            for mask in 1..<((1 << units) - 1) {
                let kept = (0..<units).filter { mask & (1 << $0) != 0 }
                result.append(CrashImage.PersistedWrite(writeIndex: write.index, keptUnits: kept))
            }
        } else if units > 3 {
            result.append(CrashImage.PersistedWrite(writeIndex: write.index, keptUnits: Array(0..<(units / 2))))
            result.append(CrashImage.PersistedWrite(writeIndex: write.index, keptUnits: Array((units / 2)..<units)))
        }
        return result
    }

    private func addExhaustive(recording: Recording, crashPoint: UInt64, add: (CrashImage) -> Void) {
        let pending = recording.pendingWrites(at: crashPoint).map { recording.writes[$0] }
        let choices = pending.map(outcomes(of:))
        var combinations = 1
        for choice in choices {
            combinations = combinations.multipliedReportingOverflow(by: choice.count).partialValue
            if combinations > options.exhaustiveImagesMax || combinations <= 0 { break }
        }
        guard combinations <= options.exhaustiveImagesMax, combinations > 0 else {
            add(CrashImage(crashPoint: crashPoint, kind: .exhaustive))
            add(CrashImage(crashPoint: crashPoint, kind: .exhaustive,
                           persisted: pending.map { CrashImage.PersistedWrite(writeIndex: $0.index) }))
            return
        }
        var digits = Array(repeating: 0, count: choices.count)
        for _ in 0..<combinations {
            let persisted = zip(choices, digits).compactMap { choice, digit in choice[digit] }
            add(CrashImage(crashPoint: crashPoint, kind: .exhaustive, persisted: persisted))
            for position in 0..<digits.count {
                digits[position] += 1
                if digits[position] < choices[position].count { break }
                digits[position] = 0
            }
        }
    }

    private func randomImage(recording: Recording, crashPoint: UInt64, random: inout SeededRandom) -> CrashImage {
        var persisted: [CrashImage.PersistedWrite] = []
        for index in recording.pendingWrites(at: crashPoint) {
            guard random.chance(options.keepProbability) else { continue }
            let write = recording.writes[index]
            let units = CrashImage.tearUnitCount(offset: write.offset, length: write.length)
            if units > 1, random.chance(options.tearProbability) {
                var kept = (0..<units).filter { _ in random.next() & 1 == 1 }
                if kept.isEmpty { kept = [Int(random.next() % UInt64(units))] }
                if kept.count == units { kept.removeLast() }
                persisted.append(CrashImage.PersistedWrite(writeIndex: index, keptUnits: kept))
            } else {
                persisted.append(CrashImage.PersistedWrite(writeIndex: index))
            }
        }
        return CrashImage(crashPoint: crashPoint, kind: .random, persisted: persisted)
    }
}
