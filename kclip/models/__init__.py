"""The dual encoder in KerasHub's roles: layers, backbone, preprocessor, task, losses, optimizer, tower builders."""
