// ThreadInspection — tests that check what an engine thread was given (its nice value, its CPUs)
// find it by name among this process's threads, from /proc.

import Foundation

public enum ThreadInspection {
    /// The /proc files of this process's threads named `name` (their `comm`), read whole:
    /// `file` is "stat" or "status". Other tests' engines may run threads of the same names.
    public static func files(_ file: String, ofThreadsNamed name: String) -> [String] {
        guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task") else { return [] }
        return tasks.compactMap { task in
            guard let comm = try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8),
                  comm.trimmingCharacters(in: .whitespacesAndNewlines) == name else { return nil }
            return try? String(contentsOfFile: "/proc/self/task/\(task)/\(file)", encoding: .utf8)
        }
    }
}
