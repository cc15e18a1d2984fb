/**
 * @nginx-sse/client: the framework-free browser client of nginx-sse.
 * Importing this module touches no browser global (SSR-safe).
 */

export { createClient } from './client';
export { matches, overlaps, invalidReason } from './pattern';
export type {
  Client,
  ClientOptions,
  ConnectionStatus,
  SSEEvent,
  SubscribeOptions,
  View,
  ViewOptions,
  ViewState,
  ViewStatus,
} from './types';
