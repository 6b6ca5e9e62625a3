-- How a device is told of a rollout when the rollout leaves it to the device ("auto"):
-- coap, observe, mqtt or http; NULL: CoAP if it has a CoAP address, else it pulls.
ALTER TABLE devices ADD COLUMN trigger TEXT;
