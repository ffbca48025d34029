// PoolPolicy settings by name — what `strata pool set KEY=VALUE` and `status` speak.
//
//   copies.metadata | copies.data | copies.log   1...4
//   spill-threshold                              percent, 1...100
//   small-block-cutoff                           bytes, with optional K/M suffix (powers of 1024)
//   metadata-reserve                             percent, 0...90
//   cache-promote-reads                          count, 1...255
//   migrate-high | migrate-low                   percent

extension PoolPolicy {
    /// Every setting name, in display order.
    public static let settingNames = [
        "copies.metadata", "copies.data", "copies.log", "spill-threshold", "small-block-cutoff",
        "metadata-reserve", "cache-promote-reads", "migrate-high", "migrate-low",
    ]

    /// The current value of each setting, in `settingNames` order.
    public var settings: [(key: String, value: String)] {
        PoolPolicy.settingNames.map { ($0, value(of: $0)!) }
    }

    public func value(of key: String) -> String? {
        switch key {
        case "copies.metadata": return String(copies(for: .metadata))
        case "copies.data": return String(copies(for: .data))
        case "copies.log": return String(copies(for: .log))
        case "spill-threshold": return String(spillThresholdPercent)
        case "small-block-cutoff": return String(smallBlockCutoffBytes)
        case "metadata-reserve": return String(metadataReservePercent)
        case "cache-promote-reads": return String(cachePromoteReads)
        case "migrate-high": return String(migrateHighPercent)
        case "migrate-low": return String(migrateLowPercent)
        default: return nil
        }
    }

    /// Applies `key=value`. Throws a message naming the key when the key is unknown or the value
    /// is not a number in range; the policy is unchanged then. Cross-field rules (migrate-low
    /// below migrate-high) are checked by `validationProblems()` on the result.
    public mutating func set(_ key: String, to text: String) throws(PoolError) {
        func number(_ range: ClosedRange<UInt64>) throws(PoolError) -> UInt64 {
            guard let value = PoolPolicy.parseBytes(text), range.contains(value) else {
                throw .invalidConfiguration("\(key)=\(text): must be a number in \(range.lowerBound)...\(range.upperBound)")
            }
            return value
        }
        var next = self
        switch key {
        case "copies.metadata": next.setCopies(Int(try number(1...UInt64(PoolPolicy.copiesMax))), for: .metadata)
        case "copies.data": next.setCopies(Int(try number(1...UInt64(PoolPolicy.copiesMax))), for: .data)
        case "copies.log": next.setCopies(Int(try number(1...UInt64(PoolPolicy.copiesMax))), for: .log)
        case "spill-threshold": next.spillThresholdPercent = UInt8(try number(1...100))
        case "small-block-cutoff": next.smallBlockCutoffBytes = try number(0...PoolPolicy.smallBlockCutoffBytesMax)
        case "metadata-reserve": next.metadataReservePercent = UInt8(try number(0...90))
        case "cache-promote-reads": next.cachePromoteReads = UInt8(try number(1...255))
        case "migrate-high": next.migrateHighPercent = UInt8(try number(1...100))
        case "migrate-low": next.migrateLowPercent = UInt8(try number(0...99))
        default:
            throw .invalidConfiguration("unknown setting '\(key)'; settings: \(PoolPolicy.settingNames.joined(separator: ", "))")
        }
        let problems = next.validationProblems()
        guard problems.isEmpty else { throw .invalidConfiguration(problems.joined(separator: "; ")) }
        self = next
    }

    /// "65536", "64K", "64KiB", "1M", "2G" → bytes (powers of 1024); nil when malformed.
    public static func parseBytes(_ text: String) -> UInt64? {
        var digits = Substring(text)
        var multiplier: UInt64 = 1
        for (suffixes, value) in [(["KiB", "K", "k"], UInt64(1) << 10), (["MiB", "M", "m"], 1 << 20),
                                  (["GiB", "G", "g"], 1 << 30), (["TiB", "T", "t"], 1 << 40)] {
            if let suffix = suffixes.first(where: { digits.hasSuffix($0) }) {
                digits = digits.dropLast(suffix.count)
                multiplier = value
                break
            }
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let value = UInt64(digits) else { return nil }
        let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : product
    }
}
