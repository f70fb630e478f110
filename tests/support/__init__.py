"""What tests share: waiting for a condition, pictures, child processes with a log, probe plugins."""
