"""The one library the gateway and both services share: nothing here is specific to one of them."""
