"""Chat surfaces: each turns platform events into `Request`s and renders `Reply`s.

`base` is the contract and what every adapter shares; `registry` finds the adapters of the
`clipbot.adapters` entry points; one folder per surface (`discord/`, `slack/`, `local/`, `shell/`).
"""
