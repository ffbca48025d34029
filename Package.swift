// swift-tools-version: 6.0
//
// Strata — a userspace object storage device engine.
// Layers (DESIGN.md): CShims → StrataIO → StrataPool → StrataLog → StrataDMU → StrataOSD,
// with StrataTesting depending only on the protocols it fakes. One target per layer.
import PackageDescription

let package = Package(
    name: "Strata",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "StrataIO", targets: ["StrataIO"]),
        .library(name: "StrataPool", targets: ["StrataPool"]),
        .library(name: "StrataTesting", targets: ["StrataTesting"]),
        .library(name: "StrataLog", targets: ["StrataLog"]),
        .library(name: "StrataDMU", targets: ["StrataDMU"]),
        .executable(name: "strata", targets: ["strata"]),
        .executable(name: "strata-crash", targets: ["strata-crash"]),
        .executable(name: "strata-perf", targets: ["strata-perf"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // C glue only: liburing macros and flags, libaio, block ioctls, crc32c.
        .target(
            name: "CShims",
            path: "CShims",
            cSettings: [.unsafeFlags(["-O2"])],
            linkerSettings: [.linkedLibrary("uring"), .linkedLibrary("aio")]
        ),
        .target(
            name: "StrataIO",
            dependencies: ["CShims"],
            path: "Sources/StrataIO",
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"])]
        ),
        .target(
            name: "StrataPool",
            dependencies: ["StrataIO", "CShims"],
            path: "Sources/StrataPool",
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"])]
        ),
        // The write-ahead intent log: record format, group commit, replay.
        .target(
            name: "StrataLog",
            dependencies: ["StrataIO", "StrataPool"],
            path: "Sources/StrataLog",
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"])]
        ),
        // Objects: dnodes and their cache, extent maps, system attributes, index trees,
        // transactions and checkpoints.
        .target(
            name: "StrataDMU",
            dependencies: ["StrataIO", "StrataPool", "StrataLog"],
            path: "Sources/StrataDMU",
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"])]
        ),
        // Crash-injection harness: recording and fault-injecting devices, crash images, oracle.
        // A product: users link it to crash-test their own servers. Depends only on the device
        // protocol it fakes (StrataIO.BlockStorage); the pool is one client among others.
        .target(
            name: "StrataTesting",
            dependencies: ["StrataIO"],
            path: "Sources/StrataTesting"
        ),
        // The pool as a client of the crash harness (issue 5, part 7): its SystemUnderTest and
        // workloads, shared by the tests and strata-crash. Not in StrataTesting, which must depend
        // only on StrataIO.
        .target(
            name: "StrataPoolCrash",
            dependencies: ["StrataIO", "StrataPool", "StrataTesting"],
            path: "Sources/StrataPoolCrash"
        ),
        // The object store (StrataDMU) as a client of the crash harness: its SystemUnderTest, model
        // and workloads, shared by the tests and strata-crash.
        .target(
            name: "StrataDMUCrash",
            dependencies: ["StrataIO", "StrataPool", "StrataLog", "StrataDMU", "StrataTesting", "StrataPoolCrash"],
            path: "Sources/StrataDMUCrash"
        ),
        .executableTarget(
            name: "strata",
            dependencies: [
                "StrataIO", "StrataPool", "StrataDMU",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/strata"
        ),
        .executableTarget(
            name: "strata-crash",
            dependencies: [
                "StrataIO", "StrataPool", "StrataTesting", "StrataPoolCrash", "StrataDMUCrash",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/strata-crash"
        ),
        .executableTarget(
            name: "strata-perf",
            dependencies: [
                "StrataIO", "StrataPool", "StrataTesting", "StrataLog", "StrataDMU",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "perf"
        ),
        // Test-only malloc interposer: counts allocations so the hot path can be proven
        // allocation-free (swift-nio's allocation-counter idea).
        .target(name: "AllocCounter", path: "Tests/AllocCounter"),
        .testTarget(
            name: "StrataIOTests",
            dependencies: ["StrataIO", "CShims", "AllocCounter"],
            path: "Tests/StrataIOTests"
        ),
        .testTarget(
            name: "StrataPoolTests",
            dependencies: ["StrataPool", "StrataIO", "AllocCounter"],
            path: "Tests/StrataPoolTests"
        ),
        .testTarget(
            name: "StrataTestingTests",
            dependencies: ["StrataTesting", "StrataPool", "StrataIO", "StrataPoolCrash"],
            path: "Tests/StrataTestingTests"
        ),
        .testTarget(
            name: "StrataLogTests",
            dependencies: ["StrataLog", "StrataPool", "StrataIO", "StrataTesting"],
            path: "Tests/StrataLogTests"
        ),
        .testTarget(
            name: "StrataDMUTests",
            dependencies: ["StrataDMU", "StrataLog", "StrataPool", "StrataIO", "StrataTesting", "AllocCounter"],
            path: "Tests/StrataDMUTests"
        ),
        // Crash-injection suite of the object store (its own target: STYLE.md).
        .testTarget(
            name: "StrataDMUCrashTests",
            dependencies: ["StrataDMUCrash", "StrataDMU", "StrataLog", "StrataPool", "StrataIO", "StrataTesting"],
            path: "Tests/StrataDMUCrashTests"
        ),
    ],
    swiftLanguageModes: [.v6]
)
