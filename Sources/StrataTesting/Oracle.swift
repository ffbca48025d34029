// Oracle — decides whether the state observed after a crash keeps the durability contract.
//
// Theory. The acknowledgement log is the oracle (ALICE's "stdout at the crash"): for each
// operation the recording holds when it was issued and when it was acknowledged, and the
// system under test describes each operation as blind writes (`Effect`s). At crash point k,
// for each key, the allowed values are:
//
//   - the value of the last operation acknowledged by k that wrote the key (or the initial
//     value when none was), and
//   - the value of every operation issued after that one and before k (unacknowledged ones
//     may or may not have happened, and an acknowledged overwrite may be followed by
//     unacknowledged ones).
//
// Anything else is a violation: an acknowledged write lost or changed (contract 1), a value
// no issued operation wrote (torn or invented data: contract 2), or a key that should not
// exist. Atomicity across keys (contract 2, "whole or absent"): an unacknowledged operation
// that wrote several keys must not be visible on some keys while others still show values
// from before it. The oracle keeps no state between checks; `verify` is a pure function of
// (observed state, crash point).

/// Checks observed states against the acknowledgement log of one recording.
public struct Oracle<Key: Hashable & Sendable & CustomStringConvertible, Value: Equatable & Sendable & CustomStringConvertible>: Sendable {
    public let initialState: [Key: Value]
    /// Effects of each operation, by operation index (same order as `recording.operations`).
    public let effects: [[Effect<Key, Value>]]
    public let operations: [RecordedOperation]

    public init(initialState: [Key: Value], effects: [[Effect<Key, Value>]], recording: Recording) {
        precondition(effects.count == recording.operations.count,
                     "\(effects.count) effect lists for \(recording.operations.count) operations")
        self.initialState = initialState
        self.effects = effects
        self.operations = recording.operations
    }

    private struct KeyWrite {
        let operation: Int
        let value: Value?
    }

    /// Every violation of the contract in `observed` at crash point `crashPoint` (empty: the
    /// state is allowed).
    public func verify(observed: [Key: Value], at crashPoint: UInt64) -> [String] {
        var writesByKey: [Key: [KeyWrite]] = [:]
        var issued = 0
        for operation in operations where operation.issueSequence <= crashPoint {
            issued += 1
            for effect in effects[operation.index] {
                writesByKey[effect.key, default: []].append(KeyWrite(operation: operation.index, value: effect.value))
            }
        }
        var keys = Set(initialState.keys)
        keys.formUnion(writesByKey.keys)
        keys.formUnion(observed.keys)
        var violations: [String] = []
        var allowedByKey: [Key: (lastAcknowledged: Int?, allowed: [KeyWrite])] = [:]
        for key in keys.sorted(by: { $0.description < $1.description }) {
            let writes = writesByKey[key] ?? []
            let lastAcknowledged = writes.lastIndex { operations[$0.operation].isAcknowledged(at: crashPoint) }
            var allowed: [KeyWrite] = []
            if let position = lastAcknowledged {
                allowed = Array(writes[position...])
            } else {
                allowed = [KeyWrite(operation: -1, value: initialState[key])] + writes
            }
            allowedByKey[key] = (lastAcknowledged.map { writes[$0].operation }, allowed)
            let actual = observed[key]
            guard !allowed.contains(where: { $0.value == actual }) else { continue }
            let shown = actual.map { $0.description } ?? "absent"
            if let position = lastAcknowledged {
                let write = writes[position]
                let expected = write.value.map { $0.description } ?? "absent"
                let later = allowed.count - 1
                violations.append("key \(key): acknowledged operation #\(write.operation + 1) (\(operations[write.operation].description)) "
                                  + "left \(expected), but the image has \(shown)"
                                  + (later > 0 ? " (nor is it one of \(later) later unacknowledged values)" : ""))
            } else {
                let initial = initialState[key].map { $0.description } ?? "absent"
                violations.append("key \(key) has \(shown), which no operation issued before the crash wrote "
                                  + "(initial \(initial); \(writes.count) unacknowledged writes)")
            }
        }
        violations += atomicityViolations(observed: observed, crashPoint: crashPoint, issued: issued,
                                          writesByKey: writesByKey)
        return violations
    }

    /// Unacknowledged multi-key operations visible on some keys and absent on others.
    private func atomicityViolations(observed: [Key: Value], crashPoint: UInt64, issued: Int,
                                     writesByKey: [Key: [KeyWrite]]) -> [String] {
        var violations: [String] = []
        for operation in operations.prefix(issued)
        where effects[operation.index].count > 1 && !operation.isAcknowledged(at: crashPoint) {
            var shownOn: [Key] = []
            var missingOn: [Key] = []
            for effect in effects[operation.index] {
                let writes = writesByKey[effect.key] ?? []
                guard let position = writes.firstIndex(where: { $0.operation == operation.index }) else { continue }
                let actual = observed[effect.key]
                let before = [initialState[effect.key]] + writes[..<position].map(\.value)
                let after = writes[(position + 1)...].map(\.value)
                let isOwnValue = actual == effect.value
                let ambiguous = before.contains { $0 == actual } || after.contains { $0 == actual }
                if isOwnValue && !ambiguous {
                    shownOn.append(effect.key)
                } else if !isOwnValue, before.contains(where: { $0 == actual }), !after.contains(where: { $0 == actual }) {
                    missingOn.append(effect.key)
                }
            }
            if !shownOn.isEmpty && !missingOn.isEmpty {
                violations.append("operation #\(operation.index + 1) (\(operation.description)) is partial: visible on "
                                  + "\(shownOn.map(\.description).joined(separator: ", ")), absent on "
                                  + "\(missingOn.map(\.description).joined(separator: ", "))")
            }
        }
        return violations
    }
}
