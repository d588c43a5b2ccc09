"""The model swapper: many HTM models served by a few long-lived slot worker processes.

``model_swapper_interface`` is the wire format and client API (apps, streamer, anomaly service);
``model_scheduler_service`` is the process (SwapController, SlotAgents, ModelRunner, checkpoints).
"""
