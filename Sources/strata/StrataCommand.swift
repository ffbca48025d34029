// strata — the command-line front of the engine.
//
//   strata pool create NAME --data PATH[:SIZE] [--metadata PATH[:SIZE]] [--log …] [--spill …]
//                     [--cache …] [--copies ROLE=N] [--set KEY=VALUE] [--force] [--json]
//   strata pool status  (--dir DIR | PATH…) [--name NAME] [--json]
//   strata pool import  (--dir DIR | PATH…) [--name NAME] [--read-only] [--json]
//   strata pool export  (--dir DIR | PATH…) [--name NAME] [--json]
//   strata pool set KEY=VALUE… (--dir DIR | PATH…) [--name NAME] [--json]
//   strata pool check (--dir DIR | PATH…) [--name NAME] [--data] [--json]
//
// There is no daemon and no cache file: every command finds the pool from its device paths (or
// a directory to scan), does its work and closes the devices. `import` checks the device set
// and marks the pool active; `export` marks it cleanly closed; `status` imports read-only and
// writes nothing. Errors go to stderr with the device path and what is wrong; exit code 1.

import ArgumentParser
import Foundation
import StrataIO
import StrataDMU
import StrataPool

@main
struct Strata: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "strata",
        abstract: "Strata — a userspace object storage engine: pools of devices with roles.",
        subcommands: [PoolCommand.self]
    )
}

struct PoolCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pool",
        abstract: "Create, inspect, import, export and configure pools.",
        subcommands: [PoolCreate.self, PoolStatusCommand.self, PoolImport.self, PoolExport.self, PoolSet.self, PoolCheck.self]
    )
}

/// How a command finds the pool's devices.
struct DeviceSelection: ParsableArguments {
    @Option(help: "Scan this directory for the pool's devices (regular files and block devices).")
    var dir: String?

    @Option(help: "The pool to use when the devices hold several (name or UUID).")
    var name: String?

    @Argument(help: "Device paths of the pool (instead of --dir).")
    var paths: [String] = []

    func validate() throws {
        if dir == nil && paths.isEmpty { throw ValidationError("give the pool's device paths or --dir DIR") }
        if dir != nil && !paths.isEmpty { throw ValidationError("give either device paths or --dir, not both") }
    }

    func importPool(readOnly: Bool) throws(PoolError) -> Pool {
        if let dir { return try Pool.importPool(scanning: dir, name: name, readOnly: readOnly) }
        return try Pool.importPool(paths: paths, name: name, readOnly: readOnly)
    }
}

struct OutputOptions: ParsableArguments {
    @Flag(help: "Print JSON instead of a table.")
    var json = false
}

/// Runs `body`, printing a PoolError as "strata: <message>" and exiting 1.
func reportingErrors<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as PoolError {
        FileHandle.standardError.write(Data("strata: \(error)\n".utf8))
        throw ExitCode(1)
    } catch let error as IOError {
        FileHandle.standardError.write(Data("strata: \(error)\n".utf8))
        throw ExitCode(1)
    } catch let error as ObjectStoreError {
        FileHandle.standardError.write(Data("strata: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

struct PoolCreate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create a pool: lay down labels, space maps and the first uberblock on every device.",
        discussion: """
        Each device is PATH or PATH:SIZE (SIZE like 512M, 4G); a missing file is created sparse at SIZE. \
        A one-device pool gives its device every role. Devices that already carry a Strata label are \
        refused unless --force; mounted or held block devices are always refused.
        """
    )

    @Argument(help: "Pool name (letters, digits, '-', '_', '.'; at most 64 bytes).")
    var name: String

    @Option(help: "A data device, PATH[:SIZE] (at least one).") var data: [String] = []
    @Option(help: "A metadata device, PATH[:SIZE].") var metadata: [String] = []
    @Option(help: "An intent-log device, PATH[:SIZE].") var log: [String] = []
    @Option(help: "A spill device, PATH[:SIZE].") var spill: [String] = []
    @Option(help: "A cache device, PATH[:SIZE].") var cache: [String] = []
    @Option(help: "Copies per role, ROLE=N (metadata, data, log; N in 1...4).") var copies: [String] = []
    @Option(name: .customLong("set"), help: "A policy setting, KEY=VALUE (see `strata pool set --help`).") var settings: [String] = []
    @Flag(help: "Overwrite devices that carry a Strata label.") var force = false
    @OptionGroup var output: OutputOptions

    func run() throws {
        var members: [Pool.MemberSpec] = []
        for (role, specs) in [(DeviceRole.data, data), (.metadata, metadata), (.log, log), (.spill, spill), (.cache, cache)] {
            for spec in specs { members.append(try parseMember(spec, role: role)) }
        }
        var policy = PoolPolicy()
        try reportingErrors {
            for entry in copies {
                let parts = entry.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
                guard parts.count == 2, !parts[1].isEmpty else { throw PoolError.invalidConfiguration("--copies \(entry): expected ROLE=N") }
                guard let role = DeviceRole(name: parts[0]) else {
                    throw PoolError.invalidConfiguration("--copies \(entry): unknown role '\(parts[0])' (roles: metadata, data, log)")
                }
                try policy.set("copies.\(role.name)", to: parts[1])
            }
            for entry in settings {
                let parts = entry.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
                guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                    throw PoolError.invalidConfiguration("--set \(entry): expected KEY=VALUE")
                }
                try policy.set(parts[0], to: parts[1])
            }
            let pool = try Pool.create(name: name, members: members, policy: policy, force: force)
            try printStatus(pool.status(), json: output.json)
        }
    }

    func parseMember(_ spec: String, role: DeviceRole) throws -> Pool.MemberSpec {
        // PATH:SIZE — the size is after the last colon when it parses as a size.
        if let colon = spec.lastIndex(of: ":") {
            let sizeText = String(spec[spec.index(after: colon)...])
            if let size = PoolPolicy.parseBytes(sizeText) {
                return Pool.MemberSpec(path: String(spec[..<colon]), role: role, createSizeBytes: size)
            }
        }
        guard !spec.isEmpty else { throw ValidationError("--\(role.name): empty device path") }
        return Pool.MemberSpec(path: spec, role: role)
    }
}

struct PoolStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show devices, roles, sizes, used and free space per device and per class, and health (writes nothing)."
    )
    @OptionGroup var devices: DeviceSelection
    @OptionGroup var output: OutputOptions

    func run() throws {
        try reportingErrors {
            let pool = try devices.importPool(readOnly: true)
            try printStatus(pool.status(), json: output.json)
        }
    }
}

struct PoolImport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Check that the device set is complete and consistent, and open the pool (marks it active unless --read-only)."
    )
    @OptionGroup var devices: DeviceSelection
    @Flag(help: "Open read-only: check and report, write nothing.") var readOnly = false
    @OptionGroup var output: OutputOptions

    func run() throws {
        try reportingErrors {
            let pool = try devices.importPool(readOnly: readOnly)
            try printStatus(pool.status(), json: output.json)
        }
    }
}

struct PoolExport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Mark the pool cleanly closed."
    )
    @OptionGroup var devices: DeviceSelection
    @OptionGroup var output: OutputOptions

    func run() throws {
        try reportingErrors {
            let pool = try devices.importPool(readOnly: false)
            try pool.export()
            try printStatus(pool.status(), json: output.json)
        }
    }
}

struct PoolSet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Change policy settings.",
        discussion: """
        Settings: copies.metadata, copies.data, copies.log (1...4, distinct devices per copy); \
        spill-threshold (percent of data-device fill past which data goes to spill devices); \
        small-block-cutoff (bytes; data blocks at most this big go to metadata devices; 0 = off); \
        metadata-reserve (percent of metadata devices kept for metadata); cache-promote-reads; \
        migrate-high, migrate-low (percent). A pool that was exported stays exported.
        """
    )
    @Argument(help: "KEY=VALUE settings, then the device paths (or --dir).")
    var arguments: [String]
    @Option(help: "Scan this directory for the pool's devices.") var dir: String?
    @Option(help: "The pool to use when the devices hold several (name or UUID).") var name: String?
    @OptionGroup var output: OutputOptions

    func run() throws {
        let settings = arguments.filter { $0.contains("=") && !$0.hasPrefix("/") && !$0.hasPrefix(".") }
        let paths = arguments.filter { !settings.contains($0) }
        guard !settings.isEmpty else { throw ValidationError("give at least one KEY=VALUE setting") }
        if dir == nil && paths.isEmpty { throw ValidationError("give the pool's device paths or --dir DIR") }
        if dir != nil && !paths.isEmpty { throw ValidationError("give either device paths or --dir, not both") }
        func open(readOnly: Bool) throws(PoolError) -> Pool {
            if let dir { return try Pool.importPool(scanning: dir, name: name, readOnly: readOnly) }
            return try Pool.importPool(paths: paths, name: name, readOnly: readOnly)
        }
        try reportingErrors {
            // Validate against the current policy with a read-only import first, so a bad
            // setting changes nothing on disk.
            var policy: PoolPolicy
            var wasExported: Bool
            do {
                let current = try open(readOnly: true)
                policy = current.configuration.policy
                wasExported = current.status().wasExported
                for entry in settings {
                    let parts = entry.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
                    guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                        throw PoolError.invalidConfiguration("\(entry): expected KEY=VALUE")
                    }
                    try policy.set(parts[0], to: parts[1])
                }
                try current.validatePolicy(policy)
            }
            let opened = try open(readOnly: false)
            try opened.setPolicy(policy)
            if wasExported { try opened.export() }
            try printStatus(opened.status(), json: output.json)
        }
    }
}

// MARK: Status output

/// "1.5 GiB", "256 MiB", "4.0 KiB", "0 B".
func humanBytes(_ bytes: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    if unit == 0 { return "\(bytes) B" }
    return value == value.rounded() ? "\(Int(value)) \(units[unit])" : String(format: "%.1f %@", value, units[unit])
}

/// Left-aligned columns separated by two spaces.
func table(_ rows: [[String]]) -> String {
    guard let first = rows.first else { return "" }
    let widths = first.indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
    return rows.map { row in
        row.enumerated().map { column, cell in
            column == row.count - 1 ? cell : cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }.joined(separator: "\n")
}

func printStatus(_ status: PoolStatus, json: Bool) throws {
    if json {
        try printJSON(status)
        return
    }
    print("pool '\(status.name)'  uuid \(status.uuid)  state \(status.state)  health \(status.health)")
    print("checkpoint \(status.checkpoint)  configuration generation \(status.configurationGeneration)  "
          + "at import: \(status.wasExported ? "cleanly exported" : "not exported (was active)")")
    print("policy: " + PoolPolicy.settingNames.map { "\($0)=\(status.policy[$0] ?? "?")" }.joined(separator: " "))
    print("")
    var rows = [["INDEX", "ROLE", "PATH", "SIZE", "USED", "FREE", "RESERVED", "LARGEST FREE", "FRAG", "HEALTH"]]
    for device in status.devices {
        rows.append([String(device.index), device.role, device.path, humanBytes(device.sizeBytes),
                     humanBytes(device.space.usedBytes), humanBytes(device.space.freeBytes),
                     humanBytes(device.space.reservedBytes), humanBytes(device.space.largestFreeExtentBytes),
                     String(format: "%.0f%%", device.space.fragmentation * 100), device.health])
    }
    print(table(rows))
    print("")
    for (title, totals) in [("ROLE", status.roles), ("CLASS", status.classes)] {
        var rows = [[title, "DEVICES", "CAPACITY", "USED", "FREE", "RESERVED", "DEFERRED", "LARGEST FREE", "FILL"]]
        for total in totals {
            rows.append([total.name, total.deviceIndices.map(String.init).joined(separator: ","), humanBytes(total.capacityBytes),
                         humanBytes(total.usedBytes), humanBytes(total.freeBytes), humanBytes(total.reservedBytes),
                         humanBytes(total.deferredBytes), humanBytes(total.largestFreeExtentBytes),
                         String(format: "%.1f%%", total.fillPercent)])
        }
        print(table(rows))
        print("")
    }
    print("allocator index memory: \(humanBytes(UInt64(status.allocatorStateBytes)))")
    if !status.skipped.isEmpty { print("\nskipped (not devices of this pool): " + status.skipped.joined(separator: ", ")) }
}
