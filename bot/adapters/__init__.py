"""Platform adapters: each turns platform events into `Request`s and renders `Reply`s."""
