"""Models, the ADL engine, the model worker and the agent's toolbox."""
