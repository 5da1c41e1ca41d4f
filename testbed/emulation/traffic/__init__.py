"""Competing traffic: the plan (`plan`), its execution during a run (`run`) and the
generator program started on the traffic hosts (`gen`)."""
